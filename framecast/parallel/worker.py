"""A DualParal worker: one pipeline stage on one device, the same code in-process (W=1), as a
torchrun rank, or as a Ray actor (built by `parallel/host.py`). Executors reach it only through
method calls by name (`collective_rpc`): `setup(request)`, `run_ticks(start, stop)`, `state()`,
`load_state(state)`. It lives as long as its Engine: weights load once, `setup` starts a request.

Rank 0 owns the latents, one sampler per live block and the coordinated noise pool; it embeds,
runs its layers and sends hidden states on; the last rank runs the head, combines CFG and sends the
velocity back to rank 0. Every rank replays the same plan, so messages carry activations only.

Ordering (DualParal §2.4): inside a tick blocks go newest first. A block-pass for block k at tick i
reads block k and its older neighbour k-1 as they were after tick i-1; rank 0 applies each arriving
velocity at once, which is safe because nothing later in the tick reads block k again. Before
computing block k it waits only for the velocities of blocks k and k-1 from the previous tick, so
the pipeline does not drain between ticks. Each `run_ticks` call ends drained (all velocities
applied), which is what makes its state a resume point.

Feature caches (cache.kind != none): each stage keeps the cache state of its own layers per live
block. The decision of a pass (compute or reuse) is made once, by rank 0 (it holds block 0, the
probe), and travels as a one-element flag tensor just before that pass's hidden states, on the
same group and in the same order (a rank's messages to one peer are ordered, under gloo and NCCL
alike); a middle stage forwards it the same way. So every stage of a block skips together and no
rank decides on its own. With cache.kind=none no flag is sent: the messages are as before. A
resumed run starts its caches cold (the first pass of each live block is computed).
"""
from __future__ import annotations

import collections
from typing import Optional

import torch
import torch.distributed as dist

from framecast.config import Config
from framecast.engine.request import Request


class DualParalWorker:
    def __init__(self, cfg: Config, checkpoint: Optional[str], rank: int, dims, groups=None):
        """One pipeline stage of the layout `dims` (ParallelDims with only `pp` > 1); `groups`: its
        named process groups (None for W=1). Built inside its process by a `WorkerHost`."""
        from framecast.engine.cache_calibration import load_calibration
        from framecast.engine.components import DTYPES, build_model, make_attention, resolve_device, sampler_factory
        from framecast.models.caches import make_cache
        from framecast.parallel.stage import StageRunner, split_layers

        if dims.world != dims.pp:
            raise ValueError(f"DualParal runs on pipeline stages only; got the layout {dims}")
        world = dims.pp
        self.cfg, self.checkpoint, self.rank, self.world = cfg, checkpoint, rank, world
        self.device = resolve_device(cfg.device)
        self.group = groups.get_group("pp") if groups is not None else None
        self.layers = split_layers(cfg.model.num_layers, world, list(cfg.parallel.layer_split))[rank]
        # only this stage's blocks (+ the shared embed/head modules), read straight in the model dtype
        model = build_model(cfg, checkpoint, layers=self.layers)
        self.model, self.dtype = model, DTYPES[cfg.model.dtype]
        self.stage = StageRunner(model, self.layers, first=rank == 0, last=rank == world - 1,
                                 attention=make_attention(cfg),
                                 features=make_cache(cfg, load_calibration(cfg, checkpoint)))
        self.flags = self.stage.features is not None  # a decision flag travels before each pass's hidden states
        self.make_sampler = sampler_factory(cfg, checkpoint)
        self.timesteps = self.make_sampler().timesteps  # host: the samplers read it
        self.timesteps_dev = self.timesteps.to(self.device)  # the model's copy, moved once
        self.ring = None
        if world > 1:
            from framecast.parallel.ring import Ring
            # activations on "pp", the velocity return (last -> 0) on "pp_return": one NCCL
            # communicator per direction, so neither queue waits behind the other (ring.py)
            self.ring = Ring(rank, world, self.device, group=self.group,
                             return_group=groups.get_group("pp_return"))

    def info(self) -> dict:
        return {"layers": [self.layers.start, self.layers.stop]}

    # ------------------------------------------------------------------------------- setup
    def setup(self, req: Request) -> dict:
        """Encode the prompt (rank 0) and share it; build the plan and the noise pool."""
        import gc

        from framecast.engine.components import build_text
        from framecast.engine.denoise import cfg_prompts, guided
        from framecast.parallel.noise import NoisePool
        from framecast.schedulers.dualparal import make_plan

        cfg = self.cfg
        s = cfg.schedule.dualparal
        self.req = req
        self.stage.new_request()
        self.plan = make_plan(req.latent_frames, s.block_frames, s.context_frames, cfg.sampler.steps)
        self.guided = guided(cfg.sampler.guidance_scale)
        batch = 2 if self.guided else 1
        shape = (batch, cfg.text.max_length, cfg.model.text_dim)
        if self.rank == 0:
            prompts = cfg_prompts(req.prompt, req.negative_prompt, cfg.sampler.guidance_scale)
            # the encoder is built for this request in the model dtype (diffusers' WanPipeline runs
            # UMT5 in the pipeline dtype), used once and released: it never sits beside the stage
            encoder = build_text(cfg, self.checkpoint, dtype=self.dtype)
            text = encoder.encode(prompts).to(self.device, self.dtype)
            del encoder
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            shape = tuple(text.shape)
        if self.world > 1:  # text length can differ from the config (tokenizer): share the shape first
            meta = torch.tensor(shape if self.rank == 0 else (0, 0, 0), dtype=torch.long, device=self.device)
            dist.broadcast(meta, group=self.group, group_src=0)
            if self.rank != 0:
                text = torch.empty(tuple(meta.tolist()), dtype=self.dtype, device=self.device)
            dist.broadcast(text, group=self.group, group_src=0)
        self.text = text
        self.frame_shape = (cfg.model.in_channels, req.latent_height, req.latent_width)
        self.noise = NoisePool(req.seed, s.block_frames, s.context_frames, self.frame_shape)
        self.lat: dict[int, torch.Tensor] = {}
        self.samplers: dict = {}
        self.next_tick = 0
        self.finished_count = 0
        return {"ticks": len(self.plan.ticks), "blocks": len(self.plan.blocks)}

    # ------------------------------------------------------------------------------ helpers
    def _inputs(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_BCFHW, t_B) for this block-pass; zeros as latents on stages other than the first."""
        c, n = item.context_frames, item.own_frames
        batch = 2 if self.guided else 1
        if self.rank == 0:
            k = item.block.index
            own = self.lat[k]
            lat = torch.cat([self.lat[k - 1][:, :, -c:], own], dim=2) if c else own
            x = lat.to(self.dtype).expand(batch, -1, -1, -1, -1)  # latents live on the device
        else:
            x = torch.zeros((batch, *self.frame_shape[:1], c + n, *self.frame_shape[1:]),
                            device=self.device, dtype=self.dtype)
        t = self.timesteps_dev[item.step]
        if self.cfg.schedule.dualparal.timesteps == "frame" and c:
            # each frame at its own level: the context was read after step + 1 updates (finished: 0)
            after = item.step + 1
            t_ctx = self.timesteps_dev[after] if after < len(self.timesteps_dev) else torch.zeros_like(t)
            return x, torch.cat([t_ctx.expand(c), t.expand(n)])[None].expand(batch, -1)
        # the whole window at the block's own level (DualParal §2.4): one timestep per CFG branch, the
        # model's [B] path — the full schedule's call, and one embedding row instead of one per frame
        return x, t.expand(batch)

    def _run(self, item, x_BLD=None, given=None) -> torch.Tensor:
        x, t = self._inputs(item)
        return self.stage.run(x, t, self.text, context_frames=item.context_frames, keep_frames=item.keep_kv,
                              use_cache=item.use_kv, x_BLD=x_BLD, step=item.step, block=item.block.index,
                              given=given, first_frame=item.frames.start)

    def _flag(self) -> torch.Tensor:
        """The feature cache's decision of the pass just run, as a tensor on this rank's device."""
        return torch.tensor([1.0 if self.stage.features.decided else 0.0], device=self.device)

    def _velocity(self, out_BCFHW: torch.Tensor, item) -> torch.Tensor:
        from framecast.engine.denoise import combine_cfg

        if self.guided:
            out_BCFHW = combine_cfg(out_BCFHW, self.cfg.sampler.guidance_scale)
        return out_BCFHW[:, :, item.context_frames:]

    def _start_block(self, item) -> None:
        b = item.block
        if item.step == 0 and b.index not in self.lat:
            noise_FCHW = self.noise.block_noise(b.index, b.stop - b.start)  # host: a function of (seed, block)
            self.lat[b.index] = noise_FCHW.permute(1, 0, 2, 3)[None].to(self.device)  # (1, C, n, h, w), moved once
            self.samplers[b.index] = self.make_sampler()

    def _apply(self, item, v: torch.Tensor, finished: list) -> None:
        k = item.block.index
        # the sampler's math and history stay on the device; its timestep table is the host's
        self.lat[k] = self.samplers[k].step(v, self.timesteps[item.step], self.lat[k])
        if item.step == len(self.timesteps) - 1:
            finished.append((k, item.block.start, item.block.stop, self._to_host(self.lat[k].float())))
            self.finished_count += 1
            del self.samplers[k]
            self.lat.pop(k - 1, None)  # block k no longer needs its context
            if k == len(self.plan.blocks) - 1:
                self.lat.pop(k, None)

    # ------------------------------------------------------------------------------- the loop
    @torch.no_grad()
    def run_ticks(self, start: int, stop: int) -> list:
        """Run ticks [start, stop). Rank 0 returns the blocks finished in them as
        (index, first latent frame, stop, latents [1, C, n, h, w] fp32 CPU); other ranks []."""
        if start != self.next_tick:
            raise RuntimeError(f"run_ticks({start}, {stop}) out of order; next tick is {self.next_tick}")
        items = [it for tick in self.plan.ticks[start:stop] for it in tick.items]
        out = self._run_rank0(items) if self.rank == 0 else self._run_stage(items)
        self._host_copies_done()
        self.next_tick = stop
        return out

    def _to_host(self, x: torch.Tensor) -> torch.Tensor:
        """A host copy for the driver or a resume record: pinned and non-blocking on a GPU (complete
        once `_host_copies_done` returns)."""
        if self.device.type != "cuda":
            return x.cpu()
        host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        return host.copy_(x, non_blocking=True)

    def _host_copies_done(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _run_rank0(self, items) -> list:
        finished: list = []
        if self.world == 1:
            for item in items:
                self._start_block(item)
                self._apply(item, self._velocity(self._run(item), item), finished)
            return finished
        pending: collections.deque = collections.deque()  # (item, receive) in send order
        sends: collections.deque = collections.deque()
        for item in items:
            k = item.block.index
            # wait for the previous tick's updates of block k and its context neighbour k-1
            while any(p[0].block.index in (k, k - 1) for p in pending):
                done, recv = pending.popleft()
                self._apply(done, recv.wait(), finished)
            self._start_block(item)
            out = self._run(item)
            if self.flags:  # the decision first, then the hidden states it applies to
                sends.append(self.ring.send(self._flag()))
            sends.append(self.ring.send(out))
            while len(sends) > 2 * (1 + self.flags):  # bound the activations in flight
                sends.popleft().wait()
            shape = (1, self.cfg.model.out_channels, item.own_frames, *self.frame_shape[1:])
            pending.append((item, self.ring.recv(shape, self.dtype)))
        while pending:
            done, recv = pending.popleft()
            self._apply(done, recv.wait(), finished)
        for s in sends:
            s.wait()
        return finished

    def _run_stage(self, items) -> list:
        batch = 2 if self.guided else 1
        dim = self.cfg.model.num_attention_heads * self.cfg.model.attention_head_dim
        tokens_per_frame = self.frame_shape[1] * self.frame_shape[2] // (
            self.cfg.model.patch_size[1] * self.cfg.model.patch_size[2])

        def post(item):  # (decision flag or None, hidden states), posted in the order they are sent
            flag = self.ring.recv((1,), torch.float32) if self.flags else None
            return flag, self.ring.recv((batch, item.query_frames * tokens_per_frame, dim), self.dtype)

        sends: collections.deque = collections.deque()
        recv = post(items[0]) if items else None
        for i, item in enumerate(items):
            nxt = post(items[i + 1]) if i + 1 < len(items) else None  # receive posted ahead
            flag, hidden = recv
            given = bool(flag.wait().item()) if flag is not None else None
            out = self._run(item, x_BLD=hidden.wait(), given=given)
            if flag is not None and not self.stage.last:  # pass the decision on to the next stage
                sends.append(self.ring.send(flag.tensor))
            sends.append(self.ring.send(self._velocity(out, item) if self.stage.last else out))
            while len(sends) > 2 * (1 + self.flags):  # bound the activations in flight
                sends.popleft().wait()
            recv = nxt
        for s in sends:
            s.wait()
        return []

    # ------------------------------------------------------------------------------ resume
    def state(self) -> dict:
        """Rank 0's resume point (valid between run_ticks calls): tick, live latents, samplers."""
        state = {"next_tick": self.next_tick, "finished": self.finished_count,
                 "lat": {k: self._to_host(v) for k, v in self.lat.items()},
                 "samplers": {k: s.state_to("cpu") for k, s in self.samplers.items()}}
        self._host_copies_done()
        return state

    def load_state(self, state: dict) -> None:
        self.next_tick = state["next_tick"]
        self.finished_count = state["finished"]
        if self.rank == 0:
            self.lat = {k: v.to(self.device) for k, v in state["lat"].items()}
            self.samplers = {k: s.state_to(self.device) for k, s in state["samplers"].items()}

    def close(self) -> None:
        """Drop the request's state and the model (the host owns the process group)."""
        self.lat, self.samplers, self.model, self.stage = {}, {}, None, None
