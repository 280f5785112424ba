"""A VIN worker: a contiguous group of the video's chunks on one device, the whole model, the same
code in-process (W=1), as a torchrun rank or as a Ray actor (built by `parallel/host.py`).
Executors reach it only through `collective_rpc`: `setup(request)`, `step(s)`, `collect(w)`.

Every rank replays the plan (`schedulers/vin.py`), so messages carry tensors only, with shapes
known from the plan. Per step s, on the layout's "sp" group:
1. keyframes: each rank writes the keyframes its chunks own into a zero tensor [K, C, h, w] (model
   dtype) and one `all_reduce(SUM)` gives every rank all of them (each slot has one writer, the
   others add +0.0: exact, so the interface is bitwise the same on every rank and at any W);
2. every rank computes the interface tokens itself from them (no broadcast of Z: same inputs,
   same code);
3. its chunks' passes (CFG in one batch), then, at fused steps, the overlap exchange with the
   neighbour ranks: to the right `isend` then `irecv`, to the left `irecv` then `isend` (so on each
   pair's communicator both ranks issue the same order: valid under NCCL's in-order rule), each the
   F_local frames of the guided velocity; both ranks compute the same cross-fade;
4. after the last step, the right chunk's overlap latents go to the left neighbour (the final
   cross-fade), and `collect(w)` sends rank w's finished frames to rank 0 (the driver's rank under
   torchrun), one worker at a time, oldest first.
All ranks issue the collective before any P2P op of the step, in the same order. Tensors live on
the rank's device. Under gloo the latents match W=1 to float rounding (tests: <= 1e-5).

Shape legend: B batch (CFG branches), C channels, F frames, K keyframes, H/W latent size, N tokens.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from framecast.config import Config
from framecast.engine.request import Request


class VinWorker:
    def __init__(self, cfg: Config, checkpoint: Optional[str], rank: int, dims, groups=None):
        """Chunk group `rank` of the layout `dims` (ParallelDims with only `sp` > 1); `groups`: its
        named process groups (None for W=1). Built inside its process by a `WorkerHost`."""
        from framecast.engine.components import DTYPES, build_interface, build_model, make_attention, resolve_device
        from framecast.engine.components import sampler_factory

        if dims.world != dims.sp:
            raise ValueError(f"VIN runs on sequence shards (chunk groups) only; got the layout {dims}")
        self.cfg, self.checkpoint, self.rank, self.world = cfg, checkpoint, rank, dims.sp
        self.device, self.dtype = resolve_device(cfg.device), DTYPES[cfg.model.dtype]
        self.group = groups.get_group("sp") if groups is not None else None
        self.model = build_model(cfg, checkpoint)
        self.options = cfg.schedule.vin
        self.vin = build_interface(cfg, checkpoint) if self.options.interface == "learned" else None
        self.layers = frozenset(cfg.vin.layers) if cfg.vin.layers else None  # None: every layer reads Z
        self.runtime = make_attention(cfg)
        self.make_sampler = sampler_factory(cfg, checkpoint)
        self.timesteps = self.make_sampler().timesteps  # host: the samplers read it
        self.timesteps_dev = self.timesteps.to(self.device)

    def info(self) -> dict:
        return {"interface": self.options.interface}

    # ------------------------------------------------------------------------------- setup
    def setup(self, req: Request) -> dict:
        """Encode the prompt (rank 0) and share it; the plan, this rank's chunks and their noise."""
        from framecast.engine.denoise import guided
        from framecast.parallel.noise import video_noise
        from framecast.schedulers.vin import keyframe_every, make_plan, overlap_weights

        cfg, o = self.cfg, self.options
        self.plan = make_plan(req.latent_frames, o.chunk_frames, o.overlap_frames, cfg.sampler.steps, self.world,
                              o.fusion, o.fusion_share, keyframe_every(o, req.fps, cfg.vae.temporal_stride))
        self.mine = self.plan.workers[self.rank]
        self.guided = guided(cfg.sampler.guidance_scale)
        self.text = self._text(req)
        self.runtime_req = self.runtime.for_request()
        shape = (1, cfg.model.in_channels, req.latent_frames, req.latent_height, req.latent_width)
        noise = video_noise(req.seed, shape)  # host, the whole video: the same at any W (a slice per chunk)
        self.lat = {i: noise[:, :, c.start:c.stop].to(self.device) for i, c in
                    ((i, self.plan.chunks[i]) for i in self.mine)}
        del noise
        self.samplers = {i: self.make_sampler() for i in self.mine}
        n = self.plan.overlap
        self.weights_F = torch.tensor(overlap_weights(n), dtype=torch.float32, device=self.device)
        # the keyframes this rank owns: (slot, chunk, frame within its window)
        self.kf_slots = [(k, c.index, f - c.start) for k, f in enumerate(self.plan.keyframes)
                         for c in [self.plan.owner(f)] if c.index in self.mine]
        self.frame_shape = (cfg.model.in_channels, req.latent_height, req.latent_width)
        return {**self.plan.summary(), "steps": self.plan.steps, "workers": self.world}

    def _text(self, req: Request) -> torch.Tensor:
        """Rank 0 encodes [prompt(, negative)] and broadcasts it on "sp" (shape first: the tokenizer decides it)."""
        import gc

        from framecast.engine.components import build_text
        from framecast.engine.denoise import cfg_prompts

        cfg = self.cfg
        shape = (2 if self.guided else 1, cfg.text.max_length, cfg.model.text_dim)
        text = None
        if self.rank == 0:
            encoder = build_text(cfg, self.checkpoint, dtype=self.dtype)  # built for the request, then released
            text = encoder.encode(cfg_prompts(req.prompt, req.negative_prompt, cfg.sampler.guidance_scale))
            text = text.to(self.device, self.dtype)
            del encoder
            gc.collect()
            shape = tuple(text.shape)
        if self.world > 1:
            meta = torch.tensor(shape, dtype=torch.long, device=self.device)
            dist.broadcast(meta, group=self.group, group_src=0)
            if self.rank != 0:
                text = torch.empty(tuple(meta.tolist()), dtype=self.dtype, device=self.device)
            dist.broadcast(text, group=self.group, group_src=0)
        return text

    # ------------------------------------------------------------------------------- a step
    @torch.no_grad()
    def step(self, s: int) -> None:
        """Denoising step s of every chunk of this rank (all ranks call it for the same s)."""
        z_BND = self._interface(s)
        v = {i: self._velocity(i, s, z_BND) for i in self.mine}
        if self.plan.fuse[s]:
            self._fuse(v)
        for i in self.mine:
            self.lat[i] = self.samplers[i].step(v[i], self.timesteps[s], self.lat[i])
        if s == self.plan.steps - 1:
            self._final_overlaps()

    def _keyframes(self) -> torch.Tensor:
        """All keyframes of the current latents, [1, C, K, H, W] in the model dtype, on every rank."""
        kf_KCHW = torch.zeros((len(self.plan.keyframes), *self.frame_shape), dtype=self.dtype, device=self.device)
        for k, i, f in self.kf_slots:
            kf_KCHW[k] = self.lat[i][0, :, f].to(self.dtype)
        if self.world > 1:
            dist.all_reduce(kf_KCHW, group=self.group)  # disjoint slots: a sum of one value and zeros, exact
        return kf_KCHW.permute(1, 0, 2, 3)[None]

    def _interface(self, s: int) -> Optional[torch.Tensor]:
        from framecast.models.vin import pooled_interface

        mode = self.options.interface
        if mode == "none":
            return None
        kf = self._keyframes()
        if mode == "pooled":
            return pooled_interface(self.model, kf, self.options.pool_grid)              # (1, N, D)
        return self.vin(kf, self.timesteps_dev[s].expand(self.text.shape[0]), self.text)  # (B, N, D)

    def _velocity(self, i: int, s: int, z_BND: Optional[torch.Tensor]) -> torch.Tensor:
        from framecast.engine.denoise import combine_cfg
        from framecast.models.blocks import run_model
        from framecast.models.conditioning import Conditioning
        from framecast.models.vin import InterfaceTokens

        batch = self.text.shape[0]
        x = self.lat[i].to(self.dtype).expand(batch, -1, -1, -1, -1)
        interface = None if z_BND is None else InterfaceTokens(z_BND, self.layers)

        def prepare(ctx):
            ctx.interface = interface
            return ctx

        out = run_model(self.model, x, self.timesteps_dev[s].expand(batch), Conditioning(self.text),
                        attention=self.runtime_req, step=s, block=i, prepare=prepare)
        return combine_cfg(out, self.cfg.sampler.guidance_scale) if self.guided else out

    # ------------------------------------------------------------------------------- overlaps
    def _cross_fade(self, left_1CFHW: torch.Tensor, right_1CFHW: torch.Tensor) -> torch.Tensor:
        """(1 − w)·left + w·right per overlap frame; the same expression on every rank that computes it."""
        w = self.weights_F.to(left_1CFHW.dtype)[None, None, :, None, None]
        return left_1CFHW * (1 - w) + right_1CFHW * w

    def _exchange(self, right: Optional[torch.Tensor], left: Optional[torch.Tensor]) -> tuple:
        """Send `right` (my last chunk's trailing overlap) to rank + 1 and `left` (my first chunk's
        leading overlap) to rank − 1, receiving theirs; None: no neighbour that side (or nothing to
        send, see `_final_overlaps`). Right pair: send then receive; left pair: receive then send."""
        ops, got = [], {}
        if right is not None:
            ops.append(dist.isend(right.contiguous(), group=self.group, group_dst=self.rank + 1))
            got["right"] = torch.empty_like(right)
            ops.append(dist.irecv(got["right"], group=self.group, group_src=self.rank + 1))
        if left is not None:
            got["left"] = torch.empty_like(left)
            ops.append(dist.irecv(got["left"], group=self.group, group_src=self.rank - 1))
            ops.append(dist.isend(left.contiguous(), group=self.group, group_dst=self.rank - 1))
        for op in ops:
            op.wait()
        return got.get("right"), got.get("left")

    def _fuse(self, v: dict) -> None:
        """Cross-fade every overlap's two predictions, in place, on both copies."""
        n, first, last = self.plan.overlap, self.mine.start, self.mine.stop - 1
        if n == 0:
            return
        # contiguous groups, every rank holds chunks: the neighbour chunks live on the neighbour ranks
        right, left = self._exchange(v[last][:, :, -n:] if self.rank + 1 < self.world else None,
                                     v[first][:, :, :n] if self.rank > 0 else None)
        fused = {}  # boundary i (chunks i, i + 1) -> the fused overlap, computed before any copy changes
        for i in range(max(first - 1, 0), min(last + 1, len(self.plan.chunks) - 1)):
            a = v[i][:, :, -n:] if i in v else left
            b = v[i + 1][:, :, :n] if i + 1 in v else right
            fused[i] = self._cross_fade(a, b)
        for i, f in fused.items():
            if i in v:
                v[i][:, :, -n:] = f
            if i + 1 in v:
                v[i + 1][:, :, :n] = f

    def _final_overlaps(self) -> None:
        """The owner of an overlap (the left chunk) cross-fades its final copy with the right chunk's,
        which travels one way: from rank + 1's first chunk to this rank."""
        n, first, last = self.plan.overlap, self.mine.start, self.mine.stop - 1
        if n == 0:
            return
        ops, right = [], None
        if self.rank + 1 < self.world:
            right = torch.empty_like(self.lat[last][:, :, -n:])
            ops.append(dist.irecv(right, group=self.group, group_src=self.rank + 1))
        if self.rank > 0:
            ops.append(dist.isend(self.lat[first][:, :, :n].contiguous(), group=self.group, group_dst=self.rank - 1))
        for op in ops:
            op.wait()
        for i in range(first, min(last + 1, len(self.plan.chunks) - 1)):
            b = self.lat[i + 1][:, :, :n] if i + 1 in self.lat else right
            self.lat[i][:, :, -n:] = self._cross_fade(self.lat[i][:, :, -n:], b)

    # ------------------------------------------------------------------------------- output
    def collect(self, w: int) -> Optional[torch.Tensor]:
        """Rank w's finished frames (its chunks' own frames, [1, C, f, H, W] fp32) at rank 0; other
        ranks return None. Called for w = 0, 1, ... after the last step."""
        frames = None
        if self.rank == w:
            frames = torch.cat([self.lat[i][:, :, self.plan.chunks[i].context:] for i in self.mine], dim=2).float()
            for i in self.mine:  # released: nothing reads them again
                del self.lat[i]
        if w == 0:
            return frames.cpu() if self.rank == 0 else None
        if self.rank == w:
            dist.send(frames.contiguous(), group=self.group, group_dst=0)
            return None
        if self.rank == 0:
            n = len(self.plan.worker_frames(w))
            buf = torch.empty((1, self.frame_shape[0], n, *self.frame_shape[1:]), dtype=torch.float32,
                              device=self.device)
            dist.recv(buf, group=self.group, group_src=w)
            return buf.cpu()
        return None

    def close(self) -> None:
        self.lat, self.samplers, self.model, self.vin = {}, {}, None, None
