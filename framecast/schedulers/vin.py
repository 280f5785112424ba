"""The `vin` schedule: the video cut into overlapping chunks denoised in parallel, one chunk (or a
contiguous group) per worker, kept consistent by global interface tokens recomputed at every
step from keyframes of the whole noisy video (spec: shared/methods/nfd-vin-streaming.md §3;
docs/vin.md). The plan is pure data — no torch, no model — and every worker replays it.

Vocabulary (spec §3.2): F latent frames, F_chunk frames per chunk, F_local frames of local
context from the previous chunk (the overlap), T steps.

- Chunks: chunk i owns the frames [i·F_chunk, (i + 1)·F_chunk) (the last one fewer, so the video
  has exactly F latent frames) and denoises the window [last F_local frames of chunk i − 1 | own
  frames] (chunk 0: its own frames). With F_local < F_chunk no frame is in more than two windows.
  Every chunk holds its own copy of its window, overlap included, with its own sampler; all
  chunks are at the same step (the tokens tie them together at every step).
- Fusion: at the steps `fuse[s]` (early / mid / late / always / none) both copies of an overlap
  frame take the linear cross-fade of the two chunks' predictions, v = (1 − w)·v_left + w·v_right
  with w = (k + 1)/(F_local + 1) for the k-th overlap frame (spec: ((F_local − W(k))·ε^i +
  W(k)·ε^{i+1}) / F_local with W(k) = F_local·w: never all one side); equal copies stay equal.
- Output: a frame is written by the chunk that owns it; an overlap frame is the same cross-fade
  of the two copies' final latents (the copies are equal when fusion runs to the last step).
- Keyframes: every `keyframe_every` latent frames from frame 0, read from the owner's copy.
- Release: every chunk is final only after step T − 1 (the tokens couple all chunks at every
  step, so no chunk can finish early); then chunks leave oldest first, each as soon as its
  trailing overlap has its right neighbour's final copy (docs/vin.md, "Release").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from framecast.schedulers.base import Schedule, check_cancel, worker_calls, worker_config_problem

WORKER = "framecast.parallel.vin_worker:VinWorker"
FUSIONS = ("none", "early", "mid", "late", "always")
INTERFACES = ("learned", "pooled", "none")


@dataclass(frozen=True)
class Chunk:
    """Window [start, stop) of the video's latent frames: [context | own]; it owns and writes
    [own_start, stop); [start, own_start) is the previous chunk's last F_local frames."""
    index: int
    start: int
    own_start: int
    stop: int

    @property
    def context(self) -> int:
        return self.own_start - self.start

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class VinPlan:
    latent_frames: int  # exactly what was asked
    chunk_frames: int  # F_chunk
    overlap: int  # F_local
    steps: int  # T
    chunks: tuple[Chunk, ...]
    fuse: tuple[bool, ...]  # per step: cross-fade the overlap predictions
    keyframes: tuple[int, ...]  # latent frames the interface reads, oldest first
    workers: tuple[range, ...]  # chunk indices per worker, contiguous, oldest first

    def owner(self, frame: int) -> Chunk:
        """The chunk that owns (writes, and gives as a keyframe) latent frame `frame`."""
        return self.chunks[frame // self.chunk_frames]

    def worker_of(self, chunk: int) -> int:
        return next(w for w, r in enumerate(self.workers) if chunk in r)

    def worker_frames(self, w: int) -> range:
        """The frames worker w writes: its chunks' output ranges, contiguous."""
        first, last = self.chunks[self.workers[w].start], self.chunks[self.workers[w].stop - 1]
        return range(first.own_start, last.stop)

    def summary(self) -> dict:
        return {"latent_frames": self.latent_frames, "chunk_frames": self.chunk_frames, "overlap": self.overlap,
                "steps": self.steps, "chunks": len(self.chunks), "fused_steps": sum(self.fuse),
                "keyframes": len(self.keyframes), "workers": [len(r) for r in self.workers]}


def overlap_weights(n: int) -> list[float]:
    """The right chunk's share of the k-th of n overlap frames: (k + 1)/(n + 1)."""
    return [(k + 1) / (n + 1) for k in range(n)]


def fused_steps(fusion: str, steps: int, share: float) -> tuple[bool, ...]:
    """Per step, whether overlap predictions are cross-faded: early = the first round(share·T) steps
    (the spec's t > t_α: 30 of 50), late = the last ones, mid = centred, always, none."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion {fusion!r} is not allowed; choose one of: {', '.join(FUSIONS)}")
    n = min(steps, max(1, round(share * steps)))
    first = {"none": 0, "always": 0, "early": 0, "late": steps - n, "mid": (steps - n) // 2}[fusion]
    count = {"none": 0, "always": steps}.get(fusion, n)
    return tuple(first <= s < first + count for s in range(steps))


def split_chunks(chunks: int, workers: int) -> tuple[range, ...]:
    """Contiguous chunk groups per worker, as even as possible, the extra ones to the lowest ranks."""
    base, extra = divmod(chunks, workers)
    counts = [base + (1 if w < extra else 0) for w in range(workers)]
    return tuple(range(sum(counts[:w]), sum(counts[:w + 1])) for w in range(workers))


def _check(name: str, value, low: int, high: Optional[int] = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")


def make_plan(latent_frames: int, chunk_frames: int, overlap: int, steps: int, workers: int = 1,
              fusion: str = "early", share: float = 0.6, keyframe_every: int = 1) -> VinPlan:
    """The VIN plan; a ValueError (one line, naming the schedule.vin field) for what cannot run."""
    _check("latent_frames", latent_frames, 1)
    _check("schedule.vin.chunk_frames", chunk_frames, 1)
    _check("schedule.vin.overlap_frames", overlap, 0, chunk_frames - 1)
    _check("steps", steps, 1)
    _check("parallel.workers", workers, 1)
    _check("keyframe interval (latent frames)", keyframe_every, 1)
    if chunk_frames > latent_frames:
        raise ValueError(f"schedule.vin.chunk_frames={chunk_frames} is more than the video's {latent_frames} latent "
                         f"frames; use at most {latent_frames} (or a longer video)")
    chunks = tuple(Chunk(i, max(0, own - overlap), own, min(own + chunk_frames, latent_frames))
                   for i, own in enumerate(range(0, latent_frames, chunk_frames)))
    if workers > len(chunks):
        raise ValueError(f"parallel.workers={workers} is more than the {len(chunks)} chunk(s) of this video "
                         f"({latent_frames} latent frames, schedule.vin.chunk_frames={chunk_frames}, "
                         f"overlap_frames={overlap}); use at most {len(chunks)} workers or smaller chunks")
    return VinPlan(latent_frames, chunk_frames, overlap, steps, chunks, fused_steps(fusion, steps, share),
                   tuple(range(0, latent_frames, keyframe_every)), split_chunks(len(chunks), workers))


@dataclass
class VinOptions:
    """schedule.vin.*"""
    chunk_frames: int = 20  # F_chunk: latent frames each chunk owns (paper: 20 = 64 video frames)
    overlap_frames: int = 12  # F_local: the previous chunk's last frames a chunk also denoises (paper: 12 at inference)
    fusion: str = "early"  # steps whose overlap predictions are cross-faded: none | early | mid | late | always
    fusion_share: float = 0.6  # share of the steps early/mid/late fuse (paper: the first 30 of 50)
    keyframe_seconds: float = 1.0  # T_s: a keyframe every T_s seconds of video (paper: 1.0)
    interface: str = "pooled"  # learned (the weights' VIN module) | pooled (training-free) | none (no tokens)
    pool_grid: int = 2  # pooled: each keyframe pooled to pool_grid x pool_grid tokens

    MINIMUM: ClassVar[dict] = {"chunk_frames": 1, "overlap_frames": 0, "pool_grid": 1}
    CHOICES: ClassVar[dict] = {"fusion": FUSIONS, "interface": INTERFACES}

    def check(self) -> Optional[str]:
        if self.overlap_frames >= self.chunk_frames:
            return (f"schedule.vin.overlap_frames={self.overlap_frames} must be < schedule.vin.chunk_frames="
                    f"{self.chunk_frames} (each chunk needs frames of its own)")
        if not 0.0 < self.fusion_share <= 1.0:
            return f"schedule.vin.fusion_share={self.fusion_share} is out of range; must be in (0, 1]"
        if not self.keyframe_seconds > 0:
            return f"schedule.vin.keyframe_seconds={self.keyframe_seconds} is out of range; must be > 0"
        return None


def keyframe_every(options: VinOptions, fps: int, temporal_stride: int) -> int:
    """Latent frames between keyframes: T_s seconds of video, at least 1."""
    return max(1, round(options.keyframe_seconds * fps / temporal_stride))


class VinSchedule(Schedule):
    """Runs the plan on the engine's workers (`parallel.workers` of them, one chunk group each) and
    hands the finished latents back oldest first. The workers (and their weights) are the engine's."""

    name = "vin"
    Options = VinOptions

    @classmethod
    def check_config(cls, cfg, options) -> Optional[str]:
        problem = worker_config_problem(cfg, cls.name)
        if problem:
            return problem
        from framecast.models.registry import model_class  # imports the one family

        if model_class(cfg.model.kind).produces_audio:
            return (f"model.kind={cfg.model.kind} cannot run under schedule.name=vin: VIN's workers and interface "
                    f"tokens carry no audio band; it runs under schedule.name=full or rollout")
        if options.interface != "none" and not model_class(cfg.model.kind).reads_interface_tokens:
            return (f"model.kind={cfg.model.kind} cannot run under schedule.name=vin with schedule.vin.interface="
                    f"{options.interface}: its blocks do not read VIN's interface tokens; "
                    f"use schedule.vin.interface=none")
        if cfg.cache.kind != "none":
            return f"cache.kind={cfg.cache.kind} does not run under schedule.name=vin yet; use cache.kind=none"
        from framecast.models.attention import BACKENDS  # the registry (imports no backend)

        backend = BACKENDS[cfg.model.attn_backend]
        if backend.context_keys and options.interface != "none":  # chunks attend to extra (token) keys
            return (f"model.attn_backend={backend.name} cannot run under schedule.name=vin with interface tokens "
                    f"(schedule.vin.interface={options.interface}): {backend.context_keys}")
        bad = [i for i in cfg.vin.layers if not 0 <= i < cfg.model.num_layers]
        if bad:
            return f"vin.layers={list(cfg.vin.layers)}: layers must be in 0..{cfg.model.num_layers - 1}"
        return None

    def plan(self, req) -> VinPlan:
        cfg, o = self.engine.cfg, self.options
        return make_plan(req.latent_frames, o.chunk_frames, o.overlap_frames, cfg.sampler.steps,
                         cfg.parallel.workers, o.fusion, o.fusion_share,
                         keyframe_every(o, req.fps, cfg.vae.temporal_stride))

    def max_frames(self, req):
        return self._noise_limit(req)

    def check(self, req, actions) -> None:
        super().check(req, actions)
        self.plan(req)  # chunk longer than the video, more workers than chunks: one line, before any work
        if self.options.interface == "learned":
            self.engine.interface_weights()  # no VIN module in the weights: one line

    def total_steps(self, req) -> int:
        return self.engine.cfg.sampler.steps

    def seams(self, req) -> tuple[int, ...]:
        return tuple(c.own_start for c in self.plan(req).chunks[1:])

    def latents(self, req, actions, progress, record=None, cancel=None):
        from tqdm.auto import tqdm

        from framecast.parallel.dims import ParallelDims

        call = worker_calls(self.engine, WORKER, ParallelDims(sp=self.engine.cfg.parallel.workers))
        info = call("setup", req)
        with tqdm(total=info["steps"], desc="denoise", unit="step", disable=not progress) as bar:
            for step in range(info["steps"]):
                check_cancel(cancel)  # between calls: the workers stay usable
                call("step", step)
                bar.update()
        for w in range(info["workers"]):  # oldest first; the driver holds one worker's frames at a time
            lat = call("collect", w)
            for f in range(lat.shape[2]):
                yield lat[:, :, f:f + 1]
