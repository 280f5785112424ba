"""The `task` schedule: VDT's tasks (shared/methods/model-zoo.md §3; masks and sampling in
framecast/models/vdt_tasks.py), window after window, for a video of any length (docs/vdt.md).

The first window (`window` latent frames, or the whole video if shorter) runs the request's task
on its condition: the given frames or region enter clean, one timestep for the whole window, and
are re-filled after every sampler step (`sample_with_mask`), so they leave exactly as given. A
longer video goes on **chunk after chunk with the predict task**: each next window is the last
`overlap` finished latent frames (given) and `window − overlap` new ones, and its new frames leave
as soon as its sampler ends. Each pass sees one window, whatever the video's length: memory is
flat in length. Window k's initial noise is `window_noise(seed, k)` (framecast/parallel/noise.py),
so the same seed gives the same video.

What each task takes as condition (frames of the first window, F = its length; docs/vdt.md):

| task          | condition frames              | given in the first window                    |
|---------------|-------------------------------|----------------------------------------------|
| unconditional | none                          | nothing                                      |
| predict       | n in 1..F − 1                 | frames 0..n − 1 (the condition), then new    |
| backward      | n in 1..F − 1                 | the last n frames; the ones before are new   |
| interpolate   | the keyframes (one per every  | frames 0, 4, 8, ... (VDT's interpolation)    |
|               | 4th frame) or F frames        |                                              |
| animate       | >= 1 (the first one is used)  | frame `animate_frame` (default 0)            |
| random        | F                             | each frame with p = 0.2, drawn from the seed |
| complete      | F                             | all but a region: --mask SPEC, or a BEiT     |
|               |                               | block mask drawn from the seed               |

Shape legend: C latent channels, F latent frames, H/W latent height/width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator, Optional

import torch

from framecast.models import vdt_tasks
from framecast.models.vdt_tasks import SPATIAL_TASK, TASKS, request_mask, sample_with_mask
from framecast.parallel.noise import window_noise
from framecast.schedulers.base import Schedule, check_cancel

NEEDS_NO_CONDITION = "unconditional"


@dataclass
class TaskOptions:
    """schedule.task.*"""
    task: str = "unconditional"  # the task when a request names none (--task): docs/vdt.md
    window: int = 0  # latent frames per pass; 0 = those of video.frames (the clip length the model was trained on)
    overlap: int = 0  # finished latent frames each next window is given when predicting on; 0 = window // 2
    animate_frame: int = 0  # animate's picture: this frame of the first window; -1 = drawn from the mask seed (VDT)
    mask_seed: int = -1  # seed of drawn masks (random, complete without --mask, animate_frame=-1); -1 = request seed

    MINIMUM: ClassVar[dict] = {"window": 0, "overlap": 0, "animate_frame": -1, "mask_seed": -1}
    CHOICES: ClassVar[dict] = {"task": tuple(TASKS)}


def resolved_window(cfg, options: TaskOptions) -> int:
    """Latent frames per window: schedule.task.window, or video.frames' latent frames for 0."""
    if options.window:
        return options.window
    return (cfg.video.frames - 1) // cfg.vae.temporal_stride + 1


def resolved_overlap(window: int, options: TaskOptions) -> int:
    return options.overlap or window // 2


def windows(latent_frames: int, window: int, overlap: int) -> list[range]:
    """The new latent frames of each window, oldest first: the first window's min(window, F), then
    `window − overlap` at a time (the last may be shorter). Window k > 0 runs over
    [start − overlap, stop)."""
    first = min(window, latent_frames)
    step = window - overlap
    return [range(0, first)] + [range(s, min(s + step, latent_frames)) for s in range(first, latent_frames, step)]


def keyframes(frames: int) -> list[int]:
    """The frames `interpolate` gives in a window of `frames` (VDT's every 4th: 0, 4, 8, ...)."""
    return [f for f, generated in enumerate(vdt_tasks.interpolate(frames, 1, 1)[:, 0, 0]) if not generated]


def condition_need(task: str, frames: int) -> str:
    """What `task` takes as condition in a first window of `frames` latent frames (for errors)."""
    if task in ("predict", "backward") and frames < 2:
        return f"a first window of at least 2 frames (here {frames}: make the video longer)"
    keys = keyframes(frames)
    return {"unconditional": "no condition",
            "predict": f"1 to {frames - 1} frames (the first frames; the rest of the {frames} are new)",
            "backward": f"1 to {frames - 1} frames (the last frames; the ones before them of the {frames} are new)",
            "interpolate": f"{len(keys)} keyframes (frames {', '.join(map(str, keys))}) or all {frames} frames",
            "animate": "at least 1 frame (the first one is used)",
            "random": f"all {frames} frames of the first window",
            "complete": f"all {frames} frames of the first window"}[task]


def task_layout(task: str, n: int, frames: int, h: int, w: int, spec: str = "", seed: int = 0,
                animate_frame: int = 0, patch: tuple[int, int] = (1, 1)) -> tuple[torch.Tensor, list[int]]:
    """(M [F, H, W] bool, True = generate; slots) of the first window: condition frame i fills window
    frame slots[i]. `n`: condition frames (0 for none). A count the task cannot take is one
    ValueError line naming `condition` and what the task needs."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not a VDT task; valid: {', '.join(TASKS)}")
    if spec and task != SPATIAL_TASK:
        raise ValueError(f"mask (--mask) is for --task {SPATIAL_TASK}; --task {task} has its own mask")
    keys = keyframes(frames)
    fits = {"unconditional": n == 0, "predict": 1 <= n <= frames - 1, "backward": 1 <= n <= frames - 1,
            "interpolate": n in (len(keys), frames), "animate": n >= 1, "random": n == frames,
            "complete": n == frames}[task]
    if not fits:
        got = f"{n} frames" if n <= frames else f"more than {frames} frames"
        raise ValueError(f"condition has {got}; --task {task} takes {condition_need(task, frames)} "
                         f"(first window: {frames} latent frames, the smaller of schedule.task.window and the video)")
    if task in ("unconditional", "random", "complete"):
        mask = request_mask(task, frames, h, w, spec, seed, patch)
        return mask, list(range(n))
    if task == "predict":
        given = list(range(n))
    elif task == "backward":
        given = list(range(frames - n, frames))
    elif task == "interpolate":
        given = keys
    else:  # animate: one frame, placed or drawn
        if animate_frame >= frames:
            raise ValueError(f"schedule.task.animate_frame={animate_frame} is outside the first window's "
                             f"0..{frames - 1}")
        frame = None if animate_frame < 0 else animate_frame
        drawn = vdt_tasks.animate(frames, h, w, torch.Generator().manual_seed(seed), frame=frame)
        given = [int((~drawn[:, 0, 0]).nonzero()[0])]
    mask = torch.ones(frames, h, w, dtype=torch.bool)
    mask[given] = False
    slots = list(range(frames)) if task == "interpolate" and n == frames else given
    return mask, slots


class TaskSchedule(Schedule):
    name = "task"
    Options = TaskOptions
    takes_task = True

    @classmethod
    def check_config(cls, cfg, options) -> Optional[str]:
        from framecast.models.registry import model_class  # imports the one family

        if not model_class(cfg.model.kind).tasks:
            return (f"model.kind={cfg.model.kind} cannot run under schedule.name=task: the family was not trained "
                    f"with mask modelling and has no tasks (model.kind=vdt has)")
        window = resolved_window(cfg, options)
        overlap = resolved_overlap(window, options)
        if window < 2:
            return f"schedule.task.window={window} (latent frames) must be >= 2: one given and one new frame a window"
        if not 1 <= overlap < window:
            return f"schedule.task.overlap={overlap} must be in 1..{window - 1} (below the window of {window})"
        return None

    def window(self) -> int:
        return resolved_window(self.engine.cfg, self.options)

    def overlap(self) -> int:
        return resolved_overlap(self.window(), self.options)

    def condition_limit(self) -> int:
        return self.window()

    def task(self, req) -> str:
        return self.options.task if req.task is None else req.task

    def layout(self, req) -> tuple[torch.Tensor, list[int]]:
        """The first window's mask and condition slots (`task_layout`) for `req`."""
        o, cfg = self.options, self.engine.cfg
        n = 0 if req.condition is None else len(req.condition)
        seed = req.seed if o.mask_seed < 0 else o.mask_seed
        return task_layout(self.task(req), n, min(self.window(), req.latent_frames), req.latent_height,
                           req.latent_width, req.mask, seed, o.animate_frame, tuple(cfg.model.patch_size[1:]))

    def check(self, req, actions) -> None:
        super().check(req, actions)
        task, cfg = self.task(req), self.engine.cfg
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not a VDT task; valid: {', '.join(TASKS)}")
        if req.condition is not None and task == NEEDS_NO_CONDITION:
            raise ValueError(f"condition given, but task={task} takes none; pick a task that uses it "
                             f"(--task {', '.join(t for t in TASKS if t != NEEDS_NO_CONDITION)})")
        if req.condition is None and task != NEEDS_NO_CONDITION:
            frames = min(self.window(), req.latent_frames)
            raise ValueError(f"task={task} needs a condition (--condition VIDEO_OR_PNG_DIR, or condition=): "
                             f"{condition_need(task, frames)}")
        if req.condition is not None and (self.engine.checkpoint is not None or cfg.vae.kind != "identity"):
            raise ValueError(f"condition: this VAE (vae.kind={cfg.vae.kind}) cannot encode frames here; "
                             "VDT's tasks with a condition need vae.kind=identity (pixel space, the tiny-vdt preset)")
        self.layout(req)

    def total_steps(self, req) -> int:
        return len(windows(req.latent_frames, self.window(), self.overlap())) * self.engine.cfg.sampler.steps

    def seams(self, req) -> tuple[int, ...]:
        return tuple(span.start for span in windows(req.latent_frames, self.window(), self.overlap())[1:])

    def latents(self, req, actions, progress, record=None, cancel=None) -> Iterator[torch.Tensor]:
        from tqdm.auto import tqdm

        engine = self.engine
        spans = windows(req.latent_frames, self.window(), self.overlap())
        mask, slots = self.layout(req)
        shape = (1, engine.cfg.model.in_channels, len(spans[0]), req.latent_height, req.latent_width)
        cond = torch.zeros(shape)
        if slots:
            cond[:, :, slots] = engine.vae.encode(req.condition[:len(slots)])
        denoise = engine.denoiser(req.prompt, req.negative_prompt)
        with tqdm(total=self.total_steps(req), desc="denoise", unit="step", disable=not progress) as bar:
            for out, new in chain(denoise, cond.to(engine.device), mask, spans, self.overlap(), req.seed,
                                     engine.make_sampler, on_step=lambda i: (bar.update(), check_cancel(cancel))):
                for f in range(new, out.shape[2]):  # each window's new frames leave as soon as it is finished
                    yield out[:, :, f:f + 1]


def chain(denoise, cond_1CFHW: torch.Tensor, mask_FHW: torch.Tensor, spans: list[range], overlap: int, seed: int,
          make_sampler, on_step=None) -> Iterator[tuple[torch.Tensor, int]]:
    """Yield (window k's finished latents [1, C, f, H, W], index of its first new frame) for each
    window: the first runs `mask_FHW` on `cond_1CFHW` (clean latents, read where M = 0); each next
    one is given the previous window's last `overlap` frames and predicts the rest. `denoise`: the
    engine's Denoiser signature; window k calls it with block=k (a feature cache keeps one state per
    window)."""
    device = cond_1CFHW.device
    tail = None
    for k, span in enumerate(spans):
        if k == 0:
            given, window_cond, mask = 0, cond_1CFHW, mask_FHW
        else:
            given = tail.shape[2]
            new = torch.zeros(*tail.shape[:2], len(span), *tail.shape[3:], device=device, dtype=tail.dtype)
            window_cond = torch.cat([tail, new], dim=2)
            mask = torch.ones(window_cond.shape[2], *window_cond.shape[3:], dtype=torch.bool)
            mask[:given] = False

        def denoise_k(lat, t, step=None, block=0, k=k):
            return denoise(lat, t, step=step, block=k)

        noise = window_noise(seed, k, tuple(window_cond.shape)).to(device)
        out = sample_with_mask(denoise_k, window_cond, mask, noise, make_sampler(), on_step=on_step)
        yield out, given
        tail = out[:, :, out.shape[2] - overlap:]
