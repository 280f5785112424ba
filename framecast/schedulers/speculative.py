"""Speculative drafting for NFD play (spec: shared/methods/nfd-vin-streaming.md §2.5).

When the real action for frame f arrives and no confirmed draft is waiting, draft K frames
f .. f+K−1 under that action, commit their K/V (after a `snapshot`), and hand out frame f. Each
later real action that equals the drafted one takes the next draft for free; at the first
mismatch that draft and all later ones are discarded, the cache is rolled back to the last
accepted frame, and a new draft starts under the new action. Rejection looks only at action
equality (ids), never at frame quality, as in NFD.

Draft modes
- "joint" (NFD): the K frames are ONE block-causal chunk: each denoising step is one forward over
  K frames, plus one commit pass, so a draft costs T + 1 forwards whatever K (T with the
  rollout's `fuse_commit`: the accepted drafts are committed in the next draft's first pass, and
  a discarded draft was never committed). Frame f+k then sees frames f .. f+k−1 mid-denoising
  rather than finished, so the video is not the one plain NFD makes; it is exactly the
  non-speculative execution of `nfd_plan(actions, window, K)` (`NfdRollout.run`): discarded
  drafts leave no trace. A model trained with joint drafts (`train --draft-prob`) expects that.
- "sequential": the K drafts are made one frame after the other (K·(T + 1) forwards), each on the
  previous draft's committed K/V: the output equals plain NFD (`NfdRollout.generate`) exactly.
  No compute is saved; it only computes frames ahead of the actions (latency hiding), and is the
  reference that proves acceptance and rollback exact.

Shape legend: C latent channels, H/W latent size; frames are handed out as [1, C, 1, H, W].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from framecast.schedulers.nfd import NfdRollout

DRAFT_MODES = ("joint", "sequential")


@dataclass
class SpeculationStats:
    drafts: int = 0      # draft rounds started
    drafted: int = 0     # frames drafted
    accepted: int = 0    # drafted frames handed out (the real action matched)
    discarded: int = 0   # drafted frames thrown away (action mismatch, or unused at the end)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def summary(self) -> str:
        return (f"drafted {self.drafted}, accepted {self.accepted}, discarded {self.discarded} "
                f"({100 * self.acceptance:.0f}% accepted, {self.drafts} drafts)")


class SpeculativeRollout:
    """Online speculation over an `NfdRollout`: `push(action)` returns the next frame."""

    def __init__(self, rollout: NfdRollout, draft: int = 4, mode: str = "joint", total: Optional[int] = None):
        if mode not in DRAFT_MODES:
            raise ValueError(f"unknown draft mode {mode!r}; valid: {', '.join(DRAFT_MODES)}")
        if not isinstance(draft, int) or draft < 1:
            raise ValueError(f"draft must be an integer >= 1 (frames), got {draft!r}")
        self.rollout, self.draft, self.mode = rollout, draft, mode
        self.total = total  # frames the session will ask for, if known: drafts never go past it
        self.next_frame = 0  # absolute index of the frame the next push returns
        self.stats = SpeculationStats()
        self._buffer: list[torch.Tensor] = []  # committed drafts not handed out yet, oldest first
        self._action: Optional[int] = None  # the action the buffered drafts assume

    def push(self, action: int) -> torch.Tensor:
        """The next frame [1, C, 1, H, W] under the real `action` (an id)."""
        action = int(action)
        if self._buffer and action != self._action:
            self._discard()
        if not self._buffer:
            self._start_draft(action)
        frame = self._buffer.pop(0)
        self.stats.accepted += 1
        self.next_frame += 1
        if not self._buffer:
            self.rollout.cache.release()  # every draft of the round was accepted
        return frame

    def prime(self, lat_1CFHW: torch.Tensor, action: int = 0) -> torch.Tensor:
        """Commit given latents [1, C, 1, H, W] as the next frame instead of generating it (a start
        frame: image-to-video, as world models start from a real frame); returns them."""
        if self._buffer:
            raise RuntimeError("prime: drafts are pending; prime only between rounds")
        self.rollout.commit(self.next_frame, lat_1CFHW, [int(action)])
        self.next_frame += 1
        return lat_1CFHW

    def finish(self) -> None:
        """Discard drafts nobody asked for, so the cache (with the rollout's pending frames, under
        fuse_commit) holds exactly the frames handed out."""
        if self._buffer:
            self._discard()

    def _discard(self) -> None:
        n = len(self._buffer)
        self.rollout.rollback(n)  # pending drafts (fuse_commit) are dropped before any cache frame
        self.rollout.cache.release()
        self.stats.discarded += n
        self._buffer = []

    def _start_draft(self, action: int) -> None:
        r, start = self.rollout, self.next_frame
        k = self.draft if self.total is None else max(1, min(self.draft, self.total - start))
        r.cache.snapshot()  # keep what a rollback of these drafts needs
        if self.mode == "joint":
            lat = r.denoise(start, [action] * k)
            r.commit(start, lat, [action] * k)
            self._buffer = [lat[:, :, i:i + 1] for i in range(k)]
        else:
            for i in range(k):
                lat = r.denoise(start + i, [action])
                r.commit(start + i, lat, [action])
                self._buffer.append(lat)
        self._action = action
        self.stats.drafts += 1
        self.stats.drafted += k


def speculative_generate(rollout: NfdRollout, actions: Sequence[int], draft: int = 4, mode: str = "joint",
                         stats: Optional[SpeculationStats] = None) -> Iterator[torch.Tensor]:
    """Frames [1, C, 1, H, W] for `actions` (one id per frame), revealed one at a time to a
    `SpeculativeRollout`; pass `stats` to read the counters afterwards."""
    spec = SpeculativeRollout(rollout, draft, mode, total=len(actions))
    if stats is not None:
        spec.stats = stats
    for action in actions:
        yield spec.push(action)
    spec.finish()
