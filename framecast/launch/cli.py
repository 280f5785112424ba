"""The `framecast` command line: generate, info, eval, play, train, serve, tune-attention, calibrate-cache.

Errors in user input print one line (`framecast: error: ...`) and exit 2 without a traceback and
without touching the output path.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
import warnings
from typing import Optional, Sequence


def _add_generate(sub) -> None:
    from framecast.schedulers.registry import SCHEDULES  # names only: imports no schedule

    p = sub.add_parser("generate", help="generate a video from a prompt",
                       description="Generate a video. Trailing KEY=VALUE items override config fields "
                                   "(e.g. sampler.steps=20 video.height=64); see configs/*.yaml.")
    p.add_argument("prompt", help="text prompt (the tiny presets understand the built-in world's vocabulary)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, help="video length in seconds (at video.fps)")
    length.add_argument("--frames", type=int, help="video length in frames")
    p.add_argument("--out", required=True, help="output: NAME.mp4, or DIR/ for numbered PNG frames")
    p.add_argument("--preset", default=None,
                   help="config preset (default: tiny; with --checkpoint: latte-1 for a Latte folder, else wan2.1-t2v-1.3b)")
    p.add_argument("--checkpoint", default=None, help="local folder in diffusers' Wan layout "
                   "(model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/)")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same video)")
    p.add_argument("--negative-prompt", default=None, help="prompt for the unconditional CFG branch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--schedule", choices=tuple(SCHEDULES), default=None,
                   help="full: whole clip at one noise level; dualparal: staggered frame blocks; "
                        "nfd: frame by frame on a KV cache (action models: see `framecast play`); "
                        "rollout: chunk after chunk, each from the finished frames before it; "
                        "vin: overlapping chunks in parallel, tied by global interface tokens (docs/vin.md); "
                        "window: every step over overlapping windows that move between steps (docs/window.md)")
    p.add_argument("--workers", type=int, default=None,
                   help="workers W: DualParal pipeline stages (layer shards) or VIN chunk groups")
    p.add_argument("--launcher", choices=("local", "torchrun", "ray"), default=None,
                   help="how DualParal / VIN workers run (local needs --workers 1)")
    p.add_argument("--block-frames", type=int, default=None, help="DualParal N: latent frames per block")
    p.add_argument("--context-frames", type=int, default=None,
                   help="DualParal C: latent frames of left context from the older neighbour (<= N)")
    p.add_argument("--chunk-frames", type=int, default=None, help="VIN F_chunk: latent frames each chunk owns")
    p.add_argument("--overlap-frames", type=int, default=None,
                   help="VIN F_local: latent frames of the previous chunk each chunk also denoises (< F_chunk)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps T (sampler.steps)")
    p.add_argument("--ray-address", default=None, help="join a running Ray cluster ('auto') instead of "
                   "starting a local one")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted DualParal run from its resume record")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--latents-out", default=None,
                   help="also save the final latents (torch.save) to this file, for comparisons")
    p.add_argument("--task", default=None,
                   help="VDT's tasks (preset tiny-vdt; docs/vdt.md): predict, backward, interpolate, animate, "
                        "complete, random (with --condition) or unconditional; sets schedule.name=task")
    p.add_argument("--condition", default=None,
                   help="the task's given frames: an .mp4 or a folder of numbered PNGs (RGB, video.height x width)")
    p.add_argument("--mask", default=None,
                   help="--task complete: the region to generate, e.g. box:8,8,24,24 or frames:4-7 (docs/vdt.md)")
    camera = p.add_mutually_exclusive_group()
    camera.add_argument("--camera", default=None, metavar="MOVE[:SPEED]",
                        help="camera move (models with a camera adapter, e.g. --preset tiny-camera; docs/camera.md): "
                             "pan-left|pan-right|pan-up|pan-down|zoom-in|zoom-out|still, speed in px/frame "
                             "(pan-left:2: the scene drifts right 2 px a frame)")
    camera.add_argument("--camera-file", default=None, metavar="POSES.json",
                        help="per-frame camera intrinsics and camera-to-world poses (format: docs/camera.md)")
    p.add_argument("--audio", action=argparse.BooleanOptionalAction, default=None,
                   help="write the soundtrack of a model that makes sound (--preset tiny-av): an AAC track in the "
                        "mp4, or DIR/audio.wav beside PNG frames; default: on for such models (--no-audio: video only)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides in dotlist form")


def generate_overrides(args) -> list[str]:
    """Flags are shorthands for config fields; explicit KEY=VALUE items come last and win."""
    flags = {"schedule.name": args.schedule, "parallel.workers": args.workers,
             "parallel.launcher": args.launcher, "schedule.dualparal.block_frames": args.block_frames,
             "schedule.dualparal.context_frames": args.context_frames, "sampler.steps": args.steps,
             "schedule.vin.chunk_frames": args.chunk_frames, "schedule.vin.overlap_frames": args.overlap_frames,
             "parallel.ray_address": args.ray_address}
    if args.task is not None:  # a task is a schedule of its own (framecast/schedulers/task.py)
        if args.schedule not in (None, "task"):
            raise ValueError(f"--task runs schedule.name=task; it does not go with --schedule {args.schedule}")
        flags.update({"schedule.name": "task", "schedule.task.task": args.task})
    return [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)


def cmd_generate(args) -> int:
    from framecast.config import load_config
    from framecast.engine.engine import Engine

    overrides = generate_overrides(args)
    if args.preset:
        preset = args.preset
    elif args.checkpoint:
        from framecast.engine.components import checkpoint_preset

        preset = checkpoint_preset(args.checkpoint)
    else:
        preset = "tiny"
    cfg = load_config(preset, overrides)
    if cfg.parallel.launcher == "torchrun" and "LOCAL_RANK" not in os.environ:
        return spawn_torchrun(["generate", *args.argv], cfg.parallel.workers)  # a one-node job of our own
    start = time.perf_counter()
    kwargs = dict(frames=args.frames, seconds=args.seconds, seed=args.seed,
                  negative_prompt=args.negative_prompt, overwrite=args.overwrite, progress=not args.quiet)
    if args.resume:
        kwargs["resume"] = True
    if args.latents_out:
        kwargs["latents_out"] = args.latents_out
    if args.task is not None or args.condition is not None or args.mask is not None:
        kwargs.update(task=args.task, condition=args.condition, mask=args.mask)
    if args.camera is not None or args.camera_file is not None:
        from pathlib import Path

        kwargs["camera"] = args.camera if args.camera is not None else Path(args.camera_file)
    if args.audio is not None:
        kwargs["audio"] = args.audio
    with Engine(cfg, checkpoint=args.checkpoint, user_overrides=overrides) as engine:
        path = engine.generate(args.prompt, out=args.out, **kwargs)
    wall = time.perf_counter() - start
    req = engine.last_request
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"framecast: wrote {req.frames} frames ({req.seconds:.1f} s at {req.fps} fps, "
          f"{req.width}x{req.height}) in {wall:.1f} s, peak RSS {rss_mb:.0f} MB -> {path}")
    return 0


def spawn_torchrun(argv: list[str], workers: int) -> int:
    """`framecast generate --launcher torchrun` outside torchrun: start a single-node torchrun job
    on loopback running `framecast.launch.torchrun` with the same arguments. Its stderr goes through
    `TorchrunOutput`: framecast's own lines and progress bars pass as they come, torchrun's
    tracebacks and failure report do not, and a failed job ends with one line naming the failed rank
    (FRAMECAST_DEBUG=1 shows everything). The job dies with this process."""
    import signal
    import subprocess
    import threading

    from framecast.parallel.torchrun_executor import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={workers}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "framecast.launch.torchrun", *argv]
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if os.environ.get("FRAMECAST_DEBUG"):
        return subprocess.call(cmd, env=env, preexec_fn=_die_with_parent(os.getpid()))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, preexec_fn=_die_with_parent(os.getpid()))
    out = TorchrunOutput(sys.stderr)

    def pump():
        while chunk := os.read(proc.stderr.fileno(), 65536):
            out.feed(chunk.decode("utf-8", "replace"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait()
    except KeyboardInterrupt:  # the job got the same Ctrl-C: let torchrun stop its ranks
        proc.send_signal(signal.SIGINT)
        rc = proc.wait()
    reader.join()
    return out.finish(rc)


def _die_with_parent(parent: int):
    """A preexec_fn: the child gets SIGTERM when this process dies (Linux), so a killed `framecast`
    never leaves a torchrun job behind still writing its output and resume record."""
    def setup():
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl
                os.kill(os.getpid(), signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    return setup if sys.platform.startswith("linux") else None


class TorchrunOutput:
    """Filters a torchrun job's stderr for the user. Passed through as they come: framecast's own
    lines (`framecast: ...`: messages, warnings, errors) and progress bars; held back: torchrun's
    banners and logs, the ranks' tracebacks and the ChildFailedError report. `finish(rc)` then makes
    framecast's error line the last line of a failed job: the error rank 0 printed (again, if
    anything came after it), else one built from torchrun's report (the first failed rank, its pid
    and how it ended), with a rank's own traceback shown first when framecast itself crashed there.
    Returns the exit code to use."""

    def __init__(self, stream):
        import re

        self.stream = stream
        self.pending = ""  # text after the last line end (a progress bar being redrawn, a partial line)
        self.held: list[str] = []  # what was not shown, for the report
        self.error = None  # the last `framecast: error:` line shown
        self.after_error = False  # something was shown after it
        self.in_bar = False
        self.pids: list[int] = []
        self._ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
        self._bar = re.compile(r"^[\w .\-]*: *\d+%\|")

    def feed(self, text: str) -> None:
        import re

        self.pending += text
        parts = re.split(r"(?<=[\r\n])", self.pending)
        self.pending = parts.pop()  # unterminated (or "")
        for seg in parts:
            self._segment(seg)

    def _show(self, seg: str) -> None:
        self.stream.write(seg)
        self.stream.flush()

    def _segment(self, seg: str) -> None:
        import re

        plain = self._ansi.sub("", seg).strip()
        if plain.startswith("framecast:"):
            if plain.startswith("framecast: torchrun:") and "pids" in plain:
                self.pids = [int(p) for p in re.findall(r"\d+", plain.split("pids", 1)[1])]
            self._show(seg if seg.endswith("\n") else seg.rstrip("\r") + "\n")
            if plain.startswith("framecast: error:"):
                self.error, self.after_error = plain, False
            else:
                self.after_error = self.after_error or self.error is not None
            self.in_bar = False
        elif self._bar.match(plain) or (not plain and self.in_bar):
            self._show(seg)
            self.in_bar = True
            self.after_error = self.after_error or self.error is not None
        else:
            if plain:
                self.held.append(plain)
                self.in_bar = False
            del self.held[:-400]

    def finish(self, rc: int) -> int:
        if self.pending:
            self._segment(self.pending + "\n")
            self.pending = ""
        if rc == 0:
            return 0
        failed = self._root_cause()
        if self.error is not None:
            if self.after_error:
                self._show(self.error + "\n")
            return failed["exitcode"] if failed and failed["exitcode"] > 0 and failed["rank"] == 0 else 1
        if failed is None:
            self._show(f"framecast: error: the torchrun job failed (exit code {rc}); run with FRAMECAST_DEBUG=1 "
                       f"to see torchrun's report\n")
            return 1
        r, pid, code = failed["rank"], failed["pid"], failed["exitcode"]
        if pid is None and r < len(self.pids):
            pid = self.pids[r]
        who = f"worker rank {r}" + (f" (pid {pid})" if pid is not None else "")
        if code < 0:
            import signal

            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
            self._show(f"framecast: error: {who} died ({how}); the run is stopped\n")
        else:
            trace = [h.split(":", 1)[1][1:] if h.startswith(f"[rank{r}]:") else h
                     for h in self.held if h.startswith(f"[rank{r}]:")]
            if trace:
                self._show("\n".join(trace) + "\n")
            self._show(f"framecast: error: {who} failed (exit code {code}); the run is stopped\n")
        return code if code > 0 else 1

    def _root_cause(self):
        """{"rank", "pid", "exitcode"} of torchrun's "Root Cause" entry, or None."""
        import re

        text = "\n".join(self.held)
        root = text.split("Root Cause", 1)[1] if "Root Cause" in text else ""
        rank = re.search(r"rank\s*:\s*(\d+)", root)
        code = re.search(r"exitcode\s*:\s*(-?\d+)(?:\s*\(pid:\s*(\d+)\))?", root)
        if not (rank and code):
            return None
        return {"rank": int(rank.group(1)), "exitcode": int(code.group(1)),
                "pid": int(code.group(2)) if code.group(2) else None}


def cmd_info(args) -> int:
    import importlib.util
    import platform

    import torch

    from framecast import __version__
    from framecast.config import presets
    from framecast.models.attention import available_backends

    print(f"framecast {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"device: cuda x{torch.cuda.device_count()} ({names})")
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads); no CUDA")
    for name, status in available_backends().items():
        print(f"attention backend {name}: {'available' if status == 'yes' else 'unavailable: ' + status}")
    from framecast.models.caches import KINDS
    print(f"feature caches (cache.kind): {', '.join(KINDS)}")
    from framecast.schedulers.registry import SCHEDULES
    print(f"schedules (schedule.name): {', '.join(SCHEDULES)}")
    from framecast.launch.family_support import family_lines
    print("\n".join(family_lines()))
    ray = importlib.util.find_spec("ray")
    if ray is None:
        print("ray: not installed (pip install 'framecast[ray]')")
    else:
        import ray as ray_mod
        print(f"ray: importable ({ray_mod.__version__})")
    print(f"presets: {', '.join(presets())}")
    return 0


def _add_info(sub) -> None:
    sub.add_parser("info", help="show versions, device, attention backends, model families and what each runs under, Ray")


def _add_eval(sub) -> None:
    from framecast.world.evaluate import add_eval_arguments  # numpy-only: cheap to import

    add_eval_arguments(sub.add_parser("eval", help="measure a built-in-world video with the world's metrics"))


def cmd_eval(args) -> int:
    from framecast.world.evaluate import run_eval
    return run_eval(args)


def _add_play(sub) -> None:
    from framecast.launch.play import add_play_arguments

    add_play_arguments(sub.add_parser("play", help="play a scripted action sequence with an action-conditioned "
                                                   "model, frame by frame (Next-Frame Diffusion)"))


def cmd_play(args) -> int:
    from framecast.launch.play import run_play
    return run_play(args)


def _add_train(sub) -> None:
    from framecast.world.train import add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train a built-in-world model (tiny, tiny-play)"))


def cmd_train(args) -> int:
    for recipe, what, preset, flags in (
            ("av", "AV-DiT's audio parts", "tiny-av", (("--click-weight", args.click_weight, 1.0),
                                                        ("--audio-lag-prob", args.audio_lag_prob, 0.0),
                                                        ("--cue-weight", args.cue_weight, 0.0))),
            ("vin", "the VIN recipe", "tiny-vin", (("--vin-windows", args.vin_windows, 0),))):
        given = [flag for flag, value, default in flags if value != default]
        if given and not getattr(args, recipe):  # a recipe's own flag without the recipe: one line, not ignored
            raise ValueError(f"{', '.join(given)}: for {what} only; add --{recipe} (--preset {preset})")
    if args.vin:  # the VIN recipe (world/vin_training.py builds on world/train.py, so it is picked here)
        from framecast.world.vin_training import run_vin_train
        return run_vin_train(args)
    if args.vdt:  # VDT's mask-modelled recipe (world/vdt_training.py)
        from framecast.world.vdt_training import run_vdt_train
        return run_vdt_train(args)
    if args.av:  # AV-DiT's audio parts on the frozen tiny backbone (world/avdit_training.py)
        from framecast.world.avdit_training import run_av_train
        return run_av_train(args)
    if args.camera:  # the camera adapter on frozen tiny (world/camera_training.py)
        from framecast.world.camera_training import run_camera_train
        return run_camera_train(args)
    from framecast.world.train import run_train
    return run_train(args)


def _add_serve(sub) -> None:
    from framecast.launch.server import add_serve_arguments  # starlette/uvicorn load only in run_serve

    add_serve_arguments(sub.add_parser("serve", help="HTTP + WebSocket server: live play with arrow keys and "
                                                     "text-to-video streaming in a browser"))


def cmd_serve(args) -> int:
    from framecast.launch.server import run_serve
    return run_serve(args)


def _add_tune_attention(sub) -> None:
    from framecast.engine.tune_attention import add_tune_arguments

    add_tune_arguments(sub.add_parser("tune-attention", help="tune a Sparse-vDiT per-head attention plan "
                                                             "(attention.sparse_vdit.plan) on a short generation"))


def cmd_tune_attention(args) -> int:
    from framecast.engine.tune_attention import run_tune
    return run_tune(args)


def _add_calibrate_cache(sub) -> None:
    from framecast.launch.calibrate_cache import add_calibrate_arguments

    add_calibrate_arguments(sub.add_parser("calibrate-cache", help="calibrate a feature cache (TeaCache polynomial, "
                                                                   "MagCache magnitude ratios) on a short run"))


def cmd_calibrate_cache(args) -> int:
    from framecast.launch.calibrate_cache import run_calibrate
    return run_calibrate(args)


COMMANDS = {"generate": (_add_generate, cmd_generate), "info": (_add_info, cmd_info),
            "eval": (_add_eval, cmd_eval), "play": (_add_play, cmd_play), "train": (_add_train, cmd_train),
            "serve": (_add_serve, cmd_serve), "tune-attention": (_add_tune_attention, cmd_tune_attention),
            "calibrate-cache": (_add_calibrate_cache, cmd_calibrate_cache)}


class OneLineParser(argparse.ArgumentParser):
    """argparse with framecast's one-line errors (argparse prints the whole usage first)."""

    def error(self, message: str):
        message = " ".join(message.split())[:300]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="framecast", description="Long-video generation with video DiTs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (add, _) in COMMANDS.items():
        add(sub)
    return parser


def _user_errors() -> tuple[type, ...]:
    from framecast.config import ConfigError
    from framecast.engine.request import RequestError
    from framecast.engine.wan_checkpoint import CheckpointError

    return (ConfigError, RequestError, CheckpointError, FileExistsError, FileNotFoundError,
            PermissionError, NotADirectoryError, IsADirectoryError, ValueError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # help, or an error listing the commands
        return 2
    # per-command parser: options and KEY=VALUE overrides may be intermixed
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    args = sub.choices[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    args.argv = argv[1:]  # without the command name
    logging.basicConfig(level=logging.WARNING, format="framecast: %(message)s")
    with warnings.catch_warnings():  # one line per warning while the command runs, restored after
        warnings.showwarning = lambda msg, cat, *a, **k: print(f"framecast: warning: {msg}", file=sys.stderr)
        return _run(args)


def _run(args) -> int:
    from framecast.parallel.ring import WorkerLost

    try:
        return COMMANDS[args.command][1](args)
    except _user_errors() as e:
        if os.environ.get("FRAMECAST_DEBUG"):
            raise
        print(f"framecast: error: {e}", file=sys.stderr)
        return 2
    except WorkerLost as e:
        print(f"framecast: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a disk or system error: one line (a resume record stays as it was)
        if os.environ.get("FRAMECAST_DEBUG"):
            raise
        print(f"framecast: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("FRAMECAST_DEBUG") or not getattr(args, "resume", False):
            raise
        # a resume that fails for any reason says so in one line; its record is kept for another try
        print(f"framecast: error: the resume failed ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
              f"its record is kept: run the same command with --resume again (FRAMECAST_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("framecast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
