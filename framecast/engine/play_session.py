"""One interactive NFD rollout: the next frame for each real action, as uint8 pixels.

    session = engine.play_session(prompt="", seed=0)
    frame = session.push("right")          # uint8 [H, W, 3]; the player moved right into it
    ...
    session.close()                        # drops the KV cache (a server does this on disconnect)

The CLI (`framecast play`), `Engine.stream` with schedule.name=nfd and the server's play socket
all go through this class, so they make the same frames for the same actions and seed. Settings
come from cfg.schedule.nfd (window, context_sigma, speculate, draft_mode, first_frame, fuse_commit);
speculate=1 is plain NFD (each push denoises and commits exactly one frame).

Start frame: world models usually start from a real frame (Oasis, GameNGen, Matrix-Game are
image-conditioned). With schedule.nfd.first_frame=world (the tiny-play preset) or an explicit
`start` frame, frame 0 is that frame — committed to the cache, not generated — and the model
generates every later frame from it; with "generate" the model also makes frame 0 from noise.
"""
from __future__ import annotations

import time
from typing import Optional, Union

import numpy as np
import torch

from framecast.world.captions import ACTIONS

Action = Union[str, int]


def action_id(action: Action) -> int:
    """An action name (`ACTIONS`) or id -> id; anything else is a one-line ValueError."""
    if isinstance(action, str):
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; valid: {', '.join(ACTIONS)}")
        return ACTIONS.index(action)
    if isinstance(action, (int, np.integer)) and not isinstance(action, bool) and 0 <= int(action) < len(ACTIONS):
        return int(action)
    raise ValueError(f"action must be one of {', '.join(ACTIONS)} (or an id 0..{len(ACTIONS) - 1}), got {action!r}")


class PlaySession:
    def __init__(self, engine, prompt: str = "", seed: Optional[int] = None, total: Optional[int] = None,
                 speculate: Optional[int] = None, start: Optional[np.ndarray] = None):
        from framecast.schedulers.nfd import NfdRollout
        from framecast.schedulers.speculative import SpeculativeRollout

        cfg = engine.cfg
        sc = cfg.schedule.nfd
        req = engine.request(prompt, frames=1, seed=seed, allow_empty_prompt=True)  # sizes, seed checks
        engine.check_prompt(req)  # unknown words are named before any work
        self.engine, self.seed = engine, req.seed
        self.acts = engine.model.action_embedder is not None
        if self.acts and cfg.model.num_actions < len(ACTIONS):
            raise ValueError(f"model.num_actions={cfg.model.num_actions}: the world's actions need "
                             f"{len(ACTIONS)} ({', '.join(ACTIONS)})")
        shape = (cfg.model.in_channels, req.latent_height, req.latent_width)
        denoiser = engine.denoiser(prompt, cfg.negative_prompt)
        self.rollout = NfdRollout(engine.model, denoiser, engine.make_sampler, shape, seed=req.seed,
                                  window=sc.window, context_sigma=sc.context_sigma,
                                  fuse_commit=sc.fuse_commit)
        k = sc.speculate if speculate is None else speculate  # a server's per-session choice
        self.speculative = SpeculativeRollout(self.rollout, k, sc.draft_mode, total=total)
        self._stats = self.speculative.stats
        self.decoder = None  # built on the first decoded push (the nfd schedule decodes in the Engine)
        self._start = self._start_latents(cfg, req, start)
        self.frames = 0
        self.model_s = 0.0  # seconds inside the model (denoising, commits, drafts), for loop-only FPS
        self.decode_s = 0.0

    @property
    def stats(self):
        """Speculation counters (drafted / accepted / discarded); still readable after `close`."""
        return self._stats

    def push(self, action: Action = "none") -> np.ndarray:
        """The next frame (uint8 [H, W, 3]) under the real `action`."""
        from framecast.engine.video_io import to_uint8

        lat = self.push_latents(action)
        t1 = time.perf_counter()
        if self.decoder is None:
            self.decoder = self.engine.vae.decoder()
        frame = to_uint8(self.decoder.decode(lat)[0])[0]
        self.decode_s += time.perf_counter() - t1
        return frame

    def push_latents(self, action: Action = "none") -> torch.Tensor:
        """The next frame's latents [1, C, 1, h, w] under the real `action` (not decoded)."""
        if self.speculative is None:
            raise RuntimeError("push on a closed PlaySession")
        a = action_id(action)
        if a and not self.acts:
            raise ValueError(f"action {ACTIONS[a]!r}: this model takes no actions (model.num_actions=0); "
                             f"only 'none' is allowed")
        t0 = time.perf_counter()
        if self.frames == 0 and self._start is not None:
            lat = self.speculative.prime(self._start, a)  # frame 0 is the start frame, as given
        else:
            lat = self.speculative.push(a)
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize()
        self.model_s += time.perf_counter() - t0
        self.frames += 1
        return lat

    def _start_latents(self, cfg, req, start: Optional[np.ndarray]) -> Optional[torch.Tensor]:
        """Latents [1, C, 1, h, w] of the start frame: `start` (uint8 [H, W, 3]) if given, else per
        schedule.nfd.first_frame ("world": frame 0 of the built-in world's play scene for this seed;
        "generate": none, the model makes frame 0 too)."""
        if start is None and cfg.schedule.nfd.first_frame == "generate":
            return None
        if cfg.vae.kind != "identity":
            raise ValueError(f"a start frame needs a pixel-space model (vae.kind=identity), not vae.kind="
                             f"{cfg.vae.kind}; use schedule.nfd.first_frame=generate")
        from framecast.world.scenes import sample_play_clip, to_model_video

        if start is None:
            if req.height != req.width:
                raise ValueError(f"schedule.nfd.first_frame=world: world scenes are square, got {req.width}x{req.height}")
            start = sample_play_clip(req.seed, 1, size=req.height).frames[0]
        start = np.asarray(start)
        if start.shape != (req.height, req.width, 3) or start.dtype != np.uint8:
            raise ValueError(f"start frame must be uint8 [{req.height}, {req.width}, 3], got {start.dtype} "
                             f"{list(start.shape)}")
        return to_model_video(start[None])[None].to(self.engine.device)

    def close(self) -> None:
        """Discard unused drafts and drop the KV cache; the session cannot be pushed afterwards."""
        if self.speculative is not None:
            self.speculative.finish()
            self.rollout.cache = None
            self.speculative = None
