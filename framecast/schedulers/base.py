"""The schedule contract: how the Engine calls every generation schedule the same way.

    schedule = SCHEDULE_CLASS(engine, options)        # options: the config section schedule.NAME
    schedule.check(request, actions)                  # before any model work
    for lat in schedule.latents(request, actions, progress, record):
        ...                                           # finished latents [1, C, f, h, w], oldest first

A schedule is one module under `framecast/schedulers/` holding its options dataclass (its own
config section, `schedule.NAME.*`) and a `Schedule` subclass, plus one line in `registry.py`.
It reaches model parts, the denoiser and workers only through the engine it is given
(`engine.denoiser(...)`, `engine.initial_latents(...)`, `engine.executor(...)`, ...), so the
schedule modules import nothing from the engine, the config or the launchers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Optional, Sequence

if TYPE_CHECKING:
    import torch

    from framecast.engine.request import Request


# Limits of what a schedule holds at once, checked before any allocation (Schedule.check)
MAX_NOISE_ELEMENTS = 2**28  # initial noise drawn up front for the whole video: 1 GiB in float32
MAX_PLAN_ITEMS = 10_000_000  # block-passes or frames a plan lists up front (plans are data)


class Cancelled(Exception):
    """The caller's `cancel` event was set: the schedule stopped between steps."""


def check_cancel(cancel) -> None:
    """Raise `Cancelled` if `cancel` (a threading.Event or None) is set; schedules call it per step."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the caller")


def worker_config_problem(cfg: Any, name: str) -> Optional[str]:
    """What a schedule running on `parallel.workers` workers (dualparal, vin) cannot take: a
    temporal patch (its blocks and chunks are latent frames), or more than one local worker."""
    if cfg.model.patch_size[0] != 1:
        return f"schedule.name={name} needs model.patch_size[0] == 1, got {list(cfg.model.patch_size)}"
    if cfg.parallel.launcher == "local" and cfg.parallel.workers != 1:
        return (f"parallel.launcher=local runs one worker; got parallel.workers={cfg.parallel.workers} "
                f"(use parallel.launcher=torchrun or ray for more)")
    return None


def worker_calls(engine: Any, worker: str, dims: Any):
    """`call(method, *args)` -> rank 0's result of `method` on the engine's workers of `worker`
    (started on first use, kept across requests). A call that fails may leave messages in flight,
    so those workers are dropped and the next request starts fresh ones."""
    executor = engine.executor(worker, dims)

    def call(method: str, *args):
        try:
            return executor.collective_rpc(method, *args)[0]
        except BaseException:
            engine.drop_executor(worker)
            raise

    return call


class Schedule:
    name: ClassVar[str] = ""
    Options: ClassVar[type]            # dataclass of the config section schedule.NAME
    takes_actions: ClassVar[bool] = False       # per-frame actions (`Engine.stream(..., actions=...)`)
    allows_empty_prompt: ClassVar[bool] = False  # action models are trained on the empty prompt
    resumable: ClassVar[bool] = False  # keeps a resume record beside the output (`--resume`)
    takes_task: ClassVar[bool] = False  # a VDT task, its condition and mask (`--task`, `--condition`, `--mask`)
    takes_camera: ClassVar[bool] = False  # camera rays for the camera adapter (`--camera`; its passes name `frames=`)

    def __init__(self, engine: Any, options: Any):
        self.engine, self.options = engine, options

    @classmethod
    def check_config(cls, cfg: Any, options: Any) -> Optional[str]:
        """A one-line problem with the whole config when this schedule is selected, or None."""
        return None

    def check(self, req: "Request", actions: Optional[Sequence[int]]) -> None:
        """Raise ValueError (one line) for a request this schedule cannot run; before any work."""
        if actions is not None and not self.takes_actions:
            raise ValueError(f"actions are taken by schedules with actions (nfd), not schedule.name={self.name!r}")
        if not self.takes_task:
            given = [n for n, v in (("task", req.task), ("condition", req.condition), ("mask", req.mask or None))
                     if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} given: VDT's tasks run with schedule.name=task (--task sets it), "
                                 f"not schedule.name={self.name!r}")
        if getattr(req, "camera", None) is not None and not self.takes_camera:
            raise ValueError(f"a camera is taken by schedules that pass each denoiser call its frames (full, rollout, "
                             f"window), not schedule.name={self.name!r}")
        limit, why = self.max_frames(req)
        if req.frames > limit:
            raise ValueError(f"frames={req.frames} ({req.seconds:g} s) is more than schedule.name={self.name} "
                             f"can make here: at most {limit} frames, because {why}")

    def condition_limit(self) -> int:
        """Most condition frames a request of this schedule can use (the loader reads one more, so
        more than this is refused without reading a whole long video); 0 for no condition."""
        return 0

    def max_frames(self, req: "Request") -> tuple[int, str]:
        """(most video frames this schedule can make for requests shaped like `req`, why)."""
        return MAX_PLAN_ITEMS, f"its plan lists every frame up front (at most {MAX_PLAN_ITEMS:,})"

    def _noise_limit(self, req: "Request") -> tuple[int, str]:
        """The limit of schedules that draw the whole video's initial noise at once."""
        per_frame = self.engine.cfg.model.in_channels * req.latent_height * req.latent_width
        latent = max(1, MAX_NOISE_ELEMENTS // per_frame)
        frames = (latent - 1) * self.engine.cfg.vae.temporal_stride + 1
        return frames, (f"it draws the whole video's initial noise at once (at most {MAX_NOISE_ELEMENTS * 4 >> 30} GiB "
                        f"in float32); schedule.name=dualparal makes longer videos block by block")

    def total_steps(self, req: "Request") -> int:
        """Model passes the progress bar counts (for the bar only)."""
        return 0

    def seams(self, req: "Request") -> tuple[int, ...]:
        """Latent frames where a new block or chunk of the plan begins (0 excluded): where the
        video may jump, for the seam metrics of bench/quality.py. A schedule that denoises the
        whole video as one has none."""
        return ()

    def latents(self, req: "Request", actions: Optional[Sequence[int]], progress: bool,
                record: Any = None, cancel: Any = None) -> Iterator["torch.Tensor"]:
        """Finished latents [1, C, f, h, w] (f >= 1 latent frames), oldest first, each as soon as it is
        final. `actions`: one id per frame (takes_actions only); `record`: a resume record
        (resumable only) holding what an interrupted run already finished; `cancel`: a
        threading.Event checked between denoising steps (`check_cancel`: raises `Cancelled`)."""
        raise NotImplementedError
