"""DualParal's context K/V under additive temporal positions (Latte, VDT): how far DualParal's video
is from the full schedule's at the same frames, with the stage's global frame positions (what ships)
and with window-local ones (what it did before), on tiny random models.

    python bench/research/dualparal_positions.py [--frames 16] [--steps 8]
                                                 [--out bench/results/dualparal_positions.json]

Both schedules start from the same noise (DualParal's per-block noise pool, handed to the full
schedule) with guidance off, so the rows differ only by DualParal itself (staggered blocks, windows,
the context K/V) and by the positions. "window-local" is the family's `absolute_positions` turned
off for the run: each window embedded at 0.., so the right-context K/V a newer block keeps were
embedded at positions C..2C-1 of its own window while the older block reads them after its own
frames. Wan (rotary, keys placed by the stage) is the reference row. A second table isolates the
right context: one reader pass of a one-block model against one joint pass over [window | right
context] (exact when the cached K/V are consistent). Prints tables, writes JSON; asserts nothing.
A random model measures the mechanism, not a trained model's quality.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framecast import Engine  # noqa: E402
from framecast.config import load_config  # noqa: E402
from framecast.models.registry import model_class  # noqa: E402
from framecast.parallel.noise import NoisePool  # noqa: E402
from framecast.schedulers.dualparal import make_blocks  # noqa: E402
from framecast.world.vdt_training import save_random_vdt  # noqa: E402

PROMPT = "a red circle moving right"
FAMILIES = {  # kind -> (preset, overrides): 3 blocks each, random weights
    "wan": ("tiny", ["model.weights=", "model.num_layers=3"]),
    "latte": ("tiny", ["model.kind=latte", "model.weights=", "model.num_attention_heads=2",
                       "model.attention_head_dim=8", "model.num_layers=3", "model.out_channels=6",
                       "model.latte.sample_size=8", "model.latte.video_length=16", "model.latte.cross_attention_dim=0",
                       "sampler.name=ddim", "video.height=16", "video.width=16"]),
    "vdt": ("tiny-vdt", ["model.num_layers=3", "model.num_attention_heads=2", "model.attention_head_dim=16",
                         "model.ffn_dim=64", "model.text_dim=16", "model.freq_dim=16"]),
}
GEOMETRIES = ((4, 2), (4, 4), (8, 4))  # (N block frames, C context frames)


def vdt_weights(overrides: list[str], folder: Path) -> list[str]:
    """A fresh VDT is adaLN-Zero (blocks identity, head zero): random values in its zero-init layers too."""
    save_random_vdt(load_config("tiny-vdt", overrides), folder)
    return overrides + [f"model.weights={folder}"]


def latents(preset: str, overrides: list[str], frames: int, tmp: Path, noise_of=None) -> torch.Tensor:
    engine = Engine.from_preset(preset, overrides)
    if noise_of is not None:  # the full schedule from DualParal's per-block noise
        N, C = noise_of

        def initial(req):
            pool = NoisePool(req.seed, N, C, (engine.cfg.model.in_channels, req.latent_height, req.latent_width))
            blocks = make_blocks(req.latent_frames, N)
            return torch.cat([pool.block_noise(b.index, len(b)) for b in blocks]).permute(1, 0, 2, 3)[None]
        engine.initial_latents = initial
    engine.generate(PROMPT, frames=frames, seed=3, out=f"{tmp}/frames/", overwrite=True, latents_out=tmp / "lat.pt")
    engine.close()
    return torch.load(tmp / "lat.pt")


def one_block(kind: str):
    """A one-block random model: its temporal K/V depend on each frame alone (and t), so one pass over
    [reader window | the right-context frames] is what a consistent right context must give."""
    torch.manual_seed(0)
    if kind == "latte":
        from framecast.models.latte import LatteModel
        return LatteModel(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3, num_layers=1,
                          cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=8,
                          video_length=16).eval()
    from framecast.models.vdt import VdtModel
    model = VdtModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3,
                     text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def reader_pass_rows() -> list[dict]:
    """One reader pass (block frames 4..7, left context 2..3, right context 8..9 kept by the newer block's
    pass over 6..11): relative error against one joint pass over frames 2..9 with the same positions,
    for global and window-local positions, and with no right context at all."""
    from framecast.models.blocks import run_model
    from framecast.models.conditioning import Conditioning
    from framecast.parallel.stage import StageRunner

    rows = []
    for kind in ("latte", "vdt"):
        model = one_block(kind)
        torch.manual_seed(1)
        lat, text, t = torch.randn(1, 3, 12, 8, 8), torch.randn(1, 5, 8), torch.tensor([500.0])

        def reader(global_positions: bool, use: bool = True):
            model.absolute_positions = global_positions  # this instance only
            stage = StageRunner(model, range(1), first=True, last=True)
            stage.run(lat[:, :, 6:12], t, text, context_frames=2, keep_frames=2, use_cache=False, first_frame=6)
            return stage.run(lat[:, :, 2:8], t, text, context_frames=2, keep_frames=2, use_cache=use, first_frame=2)

        def joint(positions):
            return run_model(model, lat[:, :, 2:10], t, Conditioning(text, frame_positions=positions))[:, :, :6]

        for mode, got, want in (("global", reader(True), joint(torch.arange(2, 10))),
                                ("window-local", reader(False), joint(torch.arange(8))),
                                ("no right context", reader(True, use=False), joint(torch.arange(2, 10)))):
            rel = ((got - want).norm() / want.norm()).item()
            rows.append({"family": kind, "right_context": mode, "rel_l2_vs_joint_pass": rel})
            print(f"{kind:6s} reader pass, {mode:16s}: |pass - joint pass| / |joint pass| = {rel:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default="bench/results/dualparal_positions.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        common = [f"sampler.steps={args.steps}", "sampler.guidance_scale=1.0", "parallel.launcher=local"]
        for kind, (preset, overrides) in FAMILIES.items():
            overrides = vdt_weights(overrides, tmp) if kind == "vdt" else overrides
            family = model_class(kind)
            modes = ("global", "window-local") if family.absolute_positions else ("rotary",)
            for N, C in GEOMETRIES:
                full = latents(preset, overrides + common + ["schedule.name=full"], args.frames, tmp, (N, C))
                for mode in modes:
                    shipped = family.absolute_positions
                    family.absolute_positions = mode == "global"  # window-local: the stage gives no positions
                    try:
                        dp = latents(preset, overrides + common + ["schedule.name=dualparal",
                                                                   f"schedule.dualparal.block_frames={N}",
                                                                   f"schedule.dualparal.context_frames={C}"],
                                     args.frames, tmp)
                    finally:
                        family.absolute_positions = shipped
                    rel = ((dp - full).norm() / full.norm()).item()
                    rows.append({"family": kind, "positions": mode, "N": N, "C": C, "rel_l2_vs_full": rel})
                    print(f"{kind:6s} {mode:13s} N={N} C={C}  |DualParal - full| / |full| = {rel:.4f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    passes = reader_pass_rows()
    Path(args.out).write_text(json.dumps({"frames": args.frames, "steps": args.steps, "rows": rows,
                                          "reader_pass": passes}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
