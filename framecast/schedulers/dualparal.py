"""The DualParal plan: temporally staggered blocks of latent frames, one denoising step per live
block per tick (spec: shared/methods/dualparal.md §2.4–2.6). Pure data — no torch, no model.

Vocabulary (spec §2.2): N latent frames per block, C left-context frames, T steps, B blocks.

Schedule. Tick i first adds block i (while blocks remain), then every live block gets one
transformer forward at its own step and one sampler update. Block k is therefore at step i − k
in tick i, neighbours are exactly one step apart (the older one is one step cleaner), a block
leaves after its T-th forward (tick k + T − 1), and there are B + T − 1 ticks, B·T block-passes and
at most min(B, T) live blocks.

Reads and writes inside a tick — the rule every executor must follow:
- All items of a tick read latents as of the START of the tick; the sampler updates of a tick are
  applied after the tick's forwards. So block k at step s reads its own latents after s updates
  and its older neighbour k − 1 (the left context) after s + 1 updates — one step cleaner; at
  k's last step that is k − 1's finished latents. The whole window is embedded with block k's
  own timestep (as the reference does), whatever the context's true noise level.
- Items run newest block first. The only reader of block k's latents in a tick is block k + 1
  (as context), which runs before k; hence an executor may apply k's update as soon as k's
  forward is done (nothing later in the tick reads k) — same result as applying after the tick.
- K/V right context: each item keeps the K/V of its first `keep_kv` own frames; the next item of
  the same tick — its older neighbour — attends to them (`use_kv`). They are computed from
  block k + 1's start-of-tick latents at k + 1's timestep (one step noisier). The first item of a
  tick has no right context (the reference clears the cache every tick).

Unlike the reference code, block 0 has no extra C frames: the video has exactly
`latent_frames` latent frames (spec §5), and a last block shorter than N is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator, Optional

from framecast.schedulers.base import MAX_PLAN_ITEMS, Schedule, check_cancel, worker_calls, worker_config_problem

EMPTY = range(0, 0)
TICKS_PER_CALL = 8  # each worker call ends drained (a resume point); enough ticks per call keep the bubble small
WORKER = "framecast.parallel.worker:DualParalWorker"


@dataclass(frozen=True)
class Block:
    """Latent frames [start, stop) of the video."""
    index: int
    start: int
    stop: int

    @property
    def frames(self) -> range:
        return range(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WorkItem:
    """One block-pass: `block` at step `step` (0..T−1, index into the sampler's timesteps).

    The window is [context | own frames]; all of it is embedded with timesteps[step].
    context: latent frames of block k − 1 used as left context — its last min(C, len) frames,
        read as they were at the start of the tick (after step + 1 updates); empty for block 0.
    keep_kv: the first `keep_kv` own frames whose per-layer K/V the stage keeps for the next item
        (the older neighbour's right context): min(C, len(block)).
    use_kv: attend to the K/V kept by the previous item of this tick — True exactly when that item
        was block k + 1 (with C = 0 it kept nothing, so there is nothing to attend to).
    right_context: the frames of block k + 1 behind that cached K/V (empty unless use_kv).
    """
    block: Block
    step: int
    context: range
    keep_kv: int
    use_kv: bool
    right_context: range = EMPTY

    @property
    def frames(self) -> range:
        """Query frames of the window: context then own, contiguous."""
        return range(self.context.start, self.block.stop) if self.context else self.block.frames

    @property
    def context_frames(self) -> int:
        return len(self.context)

    @property
    def own_frames(self) -> int:
        return len(self.block)

    @property
    def query_frames(self) -> int:
        """Frames the stage embeds and sends on: context + own."""
        return len(self.context) + len(self.block)

    @property
    def key_frames(self) -> int:
        """Frames self-attention attends to: context + own + cached right context."""
        return self.query_frames + len(self.right_context)


@dataclass(frozen=True)
class Tick:
    """One iteration. Items are ordered newest block first → oldest last (the K/V cache needs the
    newer neighbour just before). All items read latents as of the start of the tick; sampler
    steps are applied after the tick. `finished`: blocks whose T-th step is in this tick — they
    are final once this tick's updates are applied and can be decoded then."""
    index: int
    items: tuple[WorkItem, ...]
    finished: tuple[Block, ...]


@dataclass(frozen=True)
class DualParalPlan:
    latent_frames: int  # frames of the whole video (latent), exactly what was asked
    N: int  # latent frames per block
    C: int  # left-context latent frames (also the right-context K/V frames)
    T: int  # denoising steps per frame
    blocks: tuple[Block, ...]
    ticks: tuple[Tick, ...]

    def iter_items(self) -> Iterator[WorkItem]:
        """All block-passes in execution order (tick by tick, newest block first)."""
        for tick in self.ticks:
            yield from tick.items

    def summary(self) -> dict:
        B = len(self.blocks)
        return {"latent_frames": self.latent_frames, "N": self.N, "C": self.C, "T": self.T,
                "blocks": B, "ticks": len(self.ticks), "block_passes": B * self.T,
                "max_live_blocks": min(B, self.T),
                "last_block_frames": len(self.blocks[-1])}


def _check(name: str, value, low: int, high: int | None = None, what: str = "") -> None:
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        raise ValueError(f"{name}{what} must be an integer {allowed}, got {value!r}")


def make_blocks(latent_frames: int, N: int) -> tuple[Block, ...]:
    """Blocks of N frames covering [0, latent_frames); the last one may be shorter."""
    return tuple(Block(k, s, min(s + N, latent_frames)) for k, s in enumerate(range(0, latent_frames, N)))


def make_plan(latent_frames: int, N: int, C: int, T: int) -> DualParalPlan:
    """The DualParal plan for `latent_frames` latent frames, blocks of N, context C, T steps."""
    _check("latent_frames", latent_frames, 1)
    _check("N", N, 1, what=" (latent frames per block)")
    _check("C", C, 0, N, what=" (context frames, at most N)")
    _check("T", T, 1, what=" (denoising steps)")

    blocks = make_blocks(latent_frames, N)
    B = len(blocks)
    ticks = []
    for i in range(B + T - 1):
        # live blocks in tick i: k with 0 <= i - k <= T - 1 and k < B; newest first
        newest, oldest = min(i, B - 1), max(0, i - T + 1)
        items: list[WorkItem] = []
        for k in range(newest, oldest - 1, -1):
            b = blocks[k]
            prev = items[-1] if items else None  # the item just before in this tick (block k + 1)
            context = EMPTY
            if k > 0:
                left = blocks[k - 1]
                context = range(left.stop - min(C, len(left)), left.stop)
            use_kv = prev is not None and prev.block.index == k + 1
            right = range(prev.block.start, prev.block.start + prev.keep_kv) if use_kv else EMPTY
            items.append(WorkItem(b, i - k, context, min(C, len(b)), use_kv, right))
        finished = tuple(blocks[k] for k in range(oldest, newest + 1) if i - k == T - 1)
        ticks.append(Tick(i, tuple(items), finished))
    return DualParalPlan(latent_frames, N, C, T, blocks, tuple(ticks))


@dataclass
class DualParalOptions:
    """schedule.dualparal.*"""
    block_frames: int = 8  # N: latent frames per block
    context_frames: int = 4  # C: latent frames of the older neighbour as left context (<= N)
    # "block": the whole window embedded at the block's own timestep (the reference's way; a
    # model with one timestep per clip, like Wan 2.1, knows no other); "frame": each window frame
    # at its own level, the left context one step cleaner (0 once finished): for models trained
    # with a noise level per frame, which then see the context as it is
    timesteps: str = "block"

    MINIMUM: ClassVar[dict] = {"block_frames": 1, "context_frames": 0}
    CHOICES: ClassVar[dict] = {"timesteps": ("block", "frame")}

    def check(self) -> Optional[str]:
        if self.context_frames > self.block_frames:
            return (f"schedule.dualparal.context_frames={self.context_frames} must be <= "
                    f"schedule.dualparal.block_frames={self.block_frames}")
        return None


class DualParalSchedule(Schedule):
    """Runs the plan on the engine's workers (one pipeline stage each, `parallel.workers` of them)
    and hands finished blocks back in order. The workers (and their weights) are the engine's:
    they outlive the request."""

    name = "dualparal"
    Options = DualParalOptions
    resumable = True

    @classmethod
    def check_config(cls, cfg, options) -> Optional[str]:
        problem = worker_config_problem(cfg, cls.name)
        if problem:
            return problem
        from framecast.models.registry import model_class  # imports the one family

        if model_class(cfg.model.kind).produces_audio:
            return (f"model.kind={cfg.model.kind} cannot run under schedule.name=dualparal: its blocks take no cached "
                    f"context keys (the audio band's modality split); it runs under schedule.name=full or rollout")
        if cfg.parallel.workers > cfg.model.num_layers:  # one layer shard per worker at least
            return (f"parallel.workers={cfg.parallel.workers} must be <= model.num_layers={cfg.model.num_layers} "
                    f"under schedule.name=dualparal (each worker holds a shard of the layers)")
        from framecast.models.attention import BACKENDS  # the registry (imports no backend)

        backend = BACKENDS[cfg.model.attn_backend]
        if backend.context_keys and options.context_frames:  # blocks attend to their neighbour's cached K/V
            return (f"model.attn_backend={backend.name} cannot run under schedule.name=dualparal with "
                    f"schedule.dualparal.context_frames > 0: {backend.context_keys}")
        return None

    def max_frames(self, req):
        steps, n = self.engine.cfg.sampler.steps, self.options.block_frames
        latent = max(1, MAX_PLAN_ITEMS // steps * n)
        frames = (latent - 1) * self.engine.cfg.vae.temporal_stride + 1
        return frames, (f"its plan lists every block-pass up front (at most {MAX_PLAN_ITEMS:,}: blocks of {n} "
                        f"latent frames x {steps} steps)")

    def seams(self, req) -> tuple[int, ...]:
        return tuple(b.start for b in make_blocks(req.latent_frames, self.options.block_frames)[1:])

    def latents(self, req, actions, progress, record=None, cancel=None):
        from tqdm.auto import tqdm

        from framecast.parallel.dims import ParallelDims

        # between calls the pipeline is drained (each call ends with every message received), so a
        # consumer may stop reading at any yield
        call = worker_calls(self.engine, WORKER, ParallelDims(pp=self.engine.cfg.parallel.workers))
        total = call("setup", req)
        start = done = 0
        if record is not None and record.has_state():
            state = record.load_state()
            call("load_state", state)
            start, done = state["next_tick"], state["finished"]
            yield from record.finished_blocks(done)
        with tqdm(total=total["blocks"], desc="blocks", unit="block", disable=not progress) as bar:
            bar.update(done)
            for tick in range(start, total["ticks"], TICKS_PER_CALL):
                check_cancel(cancel)  # between calls, where the pipeline is drained: the workers stay usable
                finished = call("run_ticks", tick, min(tick + TICKS_PER_CALL, total["ticks"]))
                if record is not None:
                    record.save(call("state"), finished)
                for _, _, _, lat in finished:
                    bar.update()
                    yield lat
