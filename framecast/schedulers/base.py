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


class Schedule:
    name: ClassVar[str] = ""
    Options: ClassVar[type]            # dataclass of the config section schedule.NAME
    takes_actions: ClassVar[bool] = False       # per-frame actions (`Engine.stream(..., actions=...)`)
    allows_empty_prompt: ClassVar[bool] = False  # action models are trained on the empty prompt
    resumable: ClassVar[bool] = False  # keeps a resume record beside the output (`--resume`)

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

    def total_steps(self, req: "Request") -> int:
        """Model passes the progress bar counts (for the bar only)."""
        return 0

    def latents(self, req: "Request", actions: Optional[Sequence[int]], progress: bool,
                record: Any = None) -> Iterator["torch.Tensor"]:
        """Finished latents [1, C, f, h, w] (f >= 1 latent frames), oldest first, each as soon as it is
        final. `actions`: one id per frame (takes_actions only); `record`: a resume record
        (resumable only) holding what an interrupted run already finished."""
        raise NotImplementedError
