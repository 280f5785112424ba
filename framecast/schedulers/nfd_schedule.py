"""The `nfd` schedule: next-frame diffusion, one frame after the other on a KV cache of committed
frames, each under its own action (spec: shared/methods/nfd-vin-streaming.md §2). The rollout
itself is `schedulers/nfd.py` (+ `speculative.py` for drafts); an interactive caller drives the
same rollout through `Engine.play_session`, which this schedule uses with the actions known ahead.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar, Optional

from framecast.schedulers.base import Schedule, check_cancel


@dataclass
class NfdOptions:
    """schedule.nfd.*"""
    window: int = 32  # committed frames a new frame attends to (the KV cache window; NFD: 32)
    context_sigma: float = 0.0  # noise level in [0, 1) of committed frames against drift (0 = clean)
    speculate: int = 1  # draft K frames under the current action, keep those the actions confirm (1 = off)
    draft_mode: str = "joint"  # drafts: joint (one batched pass per step) | sequential (= plain NFD)
    first_frame: str = "generate"  # generate (the model makes frame 0) | world (a built-in world scene)
    fuse_commit: bool = True  # record finished frames' K/V in the next chunk's first pass (T passes, not T + 1)

    MINIMUM: ClassVar[dict] = {"window": 1, "context_sigma": 0.0, "speculate": 1}
    CHOICES: ClassVar[dict] = {"draft_mode": ("joint", "sequential"), "first_frame": ("generate", "world")}

    def check(self) -> Optional[str]:
        if not self.context_sigma < 1.0:
            return f"schedule.nfd.context_sigma={self.context_sigma} is out of range; must be in [0, 1)"
        return None


class NfdSchedule(Schedule):
    name = "nfd"
    Options = NfdOptions
    takes_actions = True
    allows_empty_prompt = True

    @classmethod
    def check_config(cls, cfg, options) -> Optional[str]:
        from framecast.models.registry import model_class  # imports the one family

        if not model_class(cfg.model.kind).supports_masks:
            return (f"model.kind={cfg.model.kind} cannot run under schedule.name=nfd: the family takes no attention "
                    f"masks, and nfd attends block-causally over its KV cache")
        if cfg.model.patch_size[0] != 1 or cfg.vae.temporal_stride != 1:
            return (f"schedule.name=nfd generates one video frame at a time: it needs model.patch_size[0]=1 "
                    f"and vae.temporal_stride=1, got {cfg.model.patch_size[0]} and {cfg.vae.temporal_stride}")
        if cfg.cache.kind != "none":
            # a frame gets only sampler.steps (4) steps, the first and last of which every cache computes,
            # and its first pass is wider (it commits the previous frame): nothing left to reuse
            return (f"cache.kind={cfg.cache.kind} does not work with schedule.name=nfd (a frame's few steps leave "
                    f"nothing to reuse); use cache.kind=none")
        from framecast.models.attention import BACKENDS  # the registry (imports no backend)

        backend = BACKENDS[cfg.model.attn_backend]
        if backend.block_causal:  # NFD attends block-causally over its KV cache
            return f"model.attn_backend={backend.name} cannot run under schedule.name=nfd: {backend.block_causal}"
        return None

    def check(self, req, actions) -> None:
        super().check(req, actions)
        if actions is not None and not 1 <= len(actions) <= req.frames:
            raise ValueError(f"actions: {len(actions)} given for {req.frames} frames; give one per frame "
                             f"(fewer: the last one holds for the rest)")

    def total_steps(self, req) -> int:
        return req.frames

    def seams(self, req) -> tuple[int, ...]:
        return tuple(range(1, req.latent_frames))  # a block is one latent frame

    def latents(self, req, actions, progress, record=None, cancel=None):
        from tqdm.auto import tqdm

        session = self.engine.play_session(req.prompt, req.seed, total=req.frames)
        try:
            with tqdm(total=req.frames, desc="nfd", unit="frame", disable=not progress) as bar:
                # fewer actions than frames: the last one holds (as `framecast play --frames`)
                held = itertools.repeat(actions[-1] if actions else 0, req.frames - len(actions or ()))
                for a in itertools.chain(actions or (), held):
                    check_cancel(cancel)
                    yield session.push_latents(a)
                    bar.update()
        finally:
            session.close()
