"""Audio-visual sync, pitch-to-colour accuracy and the world's video metrics of AV-DiT (tiny-av;
engine-defined, not the paper's: docs/avdit.md) beside the frozen video-only tiny model and the
world's own clips.

    python bench/av_sync.py [--av-weights builtin:tiny-av] [--weights builtin:tiny] [--seconds 6]
                            [--audio-lags K ...] [--set KEY=VALUE ...] [--prompts ...] [--seeds 0 1 2 3]
                            [--out bench/results/av_sync.json]

Rows (same prompts, same seeds, the presets' rollout schedule):
  world     the world's own clip of each prompt and seed with its sound (render_prompt_clip +
            world/audio.py clip_audio): the ceiling
  tiny-av   `Engine.stream(..., audio=True)` of the tiny-av preset: video and sound from one
            denoising loop (with --audio-lags, one row `lag K` per model.avdit.audio_lag=K: the
            band K sampler steps behind the video; framecast/schedulers/band.py)
  tiny      the tiny preset (video only; no sound, so no sync or pitch columns)
  shuffled  the first AV row's video with its sound of the NEXT seed (same prompt): the sync and
            pitch that sound made for another video gets by chance
Columns: framecast/world/av_metrics.py (sync: bounces seen in the video that have a click
within ±1 frame — `hit` —, clicks with no bounce within ±1 frame — `false` —, `f1`; `pitch`:
frames whose heard tones are exactly the colours seen) and framecast/world/metrics.py
(`adherence`, `direction`, `wall_return`, `presence`, `colour_identity`, `max_jump`); medians over
the videos (prompts x seeds), the count of videos each median is over in JSON. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

PROMPTS = ["a red circle moving right", "a blue square moving down", "a green triangle moving left",
           "a yellow circle moving up and a cyan square moving right", "a magenta triangle moving down"]
AV_KEYS = ("sync.hit_rate", "sync.false_click_rate", "sync.f1", "pitch.accuracy", "pitch.recall", "pitch.precision",
           "sync.bounces", "sync.clicks")
VIDEO_KEYS = ("adherence", "direction", "wall_return", "presence", "colour_identity", "max_jump")
SHOWN = {"sync.hit_rate": "hit", "sync.false_click_rate": "false", "sync.f1": "f1", "pitch.accuracy": "pitch",
         "adherence": "adher", "direction": "dir", "wall_return": "wall_ret", "presence": "presence",
         "colour_identity": "colour_id", "max_jump": "max_jump"}


def generate(engine, prompt: str, frames: int, seed: int, audio: bool):
    """(uint8 frames [F, H, W, 3], float32 audio [F·spf] or None) from Engine.stream."""
    items = list(engine.stream(prompt, frames=frames, seed=seed, audio=audio))
    if not audio:
        return np.stack(items), None
    video, chunks = zip(*items)
    video = np.stack(video)
    if video.shape[1:] != (engine.cfg.video.height, engine.cfg.video.width, 3):
        raise RuntimeError(f"tiny-av frames of shape {video.shape[1:]}: the engine did not give the latent its band")
    return video, np.concatenate(chunks)


def score(video, audio, prompt: str, fps: int) -> dict:
    from framecast.world.av_metrics import evaluate_av
    from framecast.world.metrics import evaluate_video

    m = evaluate_video(video, prompt=prompt)
    m["direction"] = float(np.mean([v for k, v in m.items() if k.startswith("prompt.") and k.endswith(".direction")]))
    out = {k: m[k] for k in VIDEO_KEYS if k in m}
    if audio is not None:
        out.update(evaluate_av(video, audio, fps))
    return out


def median_row(runs: list[dict]) -> dict:
    row = {}
    for k in AV_KEYS + VIDEO_KEYS:
        values = [r[k] for r in runs if k in r]
        if values:
            row[k] = round(statistics.median(values), 3)
            row[f"{k}.n"] = len(values)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--av-weights", default="builtin:tiny-av")
    p.add_argument("--weights", default="builtin:tiny", help="the video-only model (and tiny-av's frozen backbone)")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="tiny-av config override (e.g. model.avdit.fusion_positions=true for weights trained with it)")
    p.add_argument("--audio-lags", type=int, nargs="+", default=None,
                   help="one AV row per model.avdit.audio_lag (default: the preset's, one row `tiny-av`)")
    p.add_argument("--prompts", nargs="+", default=PROMPTS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--out", default="bench/results/av_sync.json")
    args = p.parse_args()

    from framecast import Engine
    from framecast.world.audio import clip_audio
    from framecast.world.scenes import render_prompt_clip

    av = [f"model.weights={args.av_weights}", *args.set]
    engines = ({"tiny-av": Engine.from_preset("tiny-av", av)} if args.audio_lags is None else
               {f"lag {k}": Engine.from_preset("tiny-av", [*av, f"model.avdit.audio_lag={k}"]) for k in args.audio_lags})
    first_av = next(iter(engines))
    engines["tiny"] = Engine.from_preset("tiny", [f"model.weights={args.weights}"])
    fps = engines[first_av].cfg.video.fps
    frames = round(args.seconds * fps)
    runs: dict[str, list[dict]] = {"world": [], **{name: [] for name in engines}, "shuffled": []}
    t0 = time.time()
    for prompt in args.prompts:
        made = []  # tiny-av's (video, audio) of each seed
        for seed in args.seeds:
            clip = render_prompt_clip(prompt, frames, seed)
            runs["world"].append(score(clip.frames, clip_audio(clip.objects, frames, fps), prompt, fps))
            for name, engine in engines.items():
                video, audio = generate(engine, prompt, frames, seed, audio=engine.produces_audio)
                runs[name].append(score(video, audio, prompt, fps))
                if name == first_av:
                    made.append((video, audio))
            print(f"{prompt!r} seed {seed}: " + "  ".join(
                f"{n} hit {r[-1].get('sync.hit_rate', float('nan')):.2f} pitch {r[-1].get('pitch.accuracy', float('nan')):.2f}"
                for n, r in runs.items() if n != "shuffled"), flush=True)
        for i, (video, _) in enumerate(made):
            runs["shuffled"].append(score(video, made[(i + 1) % len(made)][1], prompt, fps))
    table = {name: median_row(r) for name, r in runs.items()}
    head = f"{'row':<8} " + " ".join(f"{v:>9}" for v in SHOWN.values())
    print(f"\nmedians over {len(args.prompts)} prompts x {len(args.seeds)} seeds, {frames} frames ({args.seconds:g} s)")
    print(head)
    for name, row in table.items():
        print(f"{name:<8} " + " ".join(f"{row[k]:>9.3f}" if k in row else f"{'-':>9}" for k in SHOWN))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python bench/av_sync.py " + " ".join(
            [f"--av-weights {args.av_weights}", f"--weights {args.weights}", f"--seconds {args.seconds:g}",
             *([] if args.audio_lags is None else ["--audio-lags " + " ".join(map(str, args.audio_lags))]),
             *[f"--set {kv}" for kv in args.set],
             "--seeds " + " ".join(map(str, args.seeds))]),
        "prompts": args.prompts, "seeds": args.seeds, "frames": frames, "fps": fps, "wall_s": round(time.time() - t0, 1),
        "rows": table, "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
