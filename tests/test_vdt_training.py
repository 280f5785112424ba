"""VDT training in the built-in world (framecast/world/vdt_training.py): the masked loss sees the
given region clean and ignores it, a short run lowers the loss and writes weights the preset's
model loads, `framecast train --vdt` reaches it."""
import json

import numpy as np
import torch
from safetensors.torch import load_file

import framecast.world.vdt_training as vdt_training
from framecast.config import load_config
from framecast.models.blocks import run_model
from framecast.world.train import TrainOptions, step_generator

# A much smaller VDT than tiny-vdt, so a few dozen steps take seconds.
SMALL = ["model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=16", "model.ffn_dim=64",
         "model.text_dim=16", "model.freq_dim=16", "model.weights="]


def small_cfg():
    return load_config("tiny-vdt", SMALL)


def test_loss_sees_given_positions_clean_and_ignores_them(monkeypatch):
    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches

    cfg = small_cfg()
    nets = vdt_training.build_vdt_nets(cfg, seed=0)
    with torch.no_grad():  # leave adaLN-Zero: the output must depend on the input for the test to mean anything
        for p in nets["transformer"].parameters():
            p.normal_(0, 0.05)
    seen = {}

    def spy(model, x, t, cond, **kw):  # the loss's one model call: keep its input, timestep and output
        seen["x"], seen["t"] = x, t
        seen["v"] = v = run_model(model, x, t, cond, **kw)
        v.retain_grad()
        return v

    monkeypatch.setattr(vdt_training, "run_model", spy)
    batch = next(world_batches(0, 6, 6))
    empty = torch.tensor([tokenize("", max_len=16)])
    opt = TrainOptions()
    loss = vdt_training.vdt_loss(nets, batch, step_generator(0, 3), opt, empty)
    loss.backward()
    # replay the step's draws: sigma, noise, caption dropout, then the clips' masks
    gen = step_generator(0, 3)
    torch.randn(6, generator=gen)
    torch.randn(batch["video"].shape, generator=gen)
    torch.rand(6, generator=gen)
    names, mask_BFHW = vdt_training.clip_masks(gen, 6, 6, 32, 32, (4, 4))
    m = mask_BFHW[:, None].expand_as(batch["video"])
    assert seen["t"].shape == (6,)                                  # one timestep per clip (VDT)
    assert torch.equal(seen["x"][~m], batch["video"][~m])           # given: clean
    assert not bool(seen["v"].grad[~m].any())                       # ... and outside the loss
    assert bool(seen["v"].grad[m].ne(0).float().mean() > 0.99)
    assert (~m).any() and m.any()


def test_short_run_lowers_the_loss_and_writes_loadable_weights(tmp_path):
    meta = vdt_training.train_vdt(small_cfg(), tmp_path, steps=30, batch=4, frames=4, seed=0,
                                  opt=TrainOptions(lr=2e-3, warmup=5), log_every=0)
    losses = meta["losses"]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    sd = load_file(str(tmp_path / "weights.safetensors"))
    assert {k.split(".", 1)[0] for k in sd} == {"transformer", "text_encoder"}
    nets = vdt_training.build_vdt_nets(small_cfg(), seed=1)
    nets.load_state_dict(sd)                                        # strict: the preset's model layout
    assert json.loads((tmp_path / "weights.json").read_text())["steps"] == 30


def test_train_cli_vdt_runs_and_refuses_bad_options(tmp_path, capsys):
    from framecast.launch.cli import main

    out = tmp_path / "run"
    sets = [a for s in SMALL for a in ("--set", s)]
    assert main(["train", "--vdt", "--preset", "tiny-vdt", "--out", str(out), "--steps", "2", "--batch", "2",
                 "--frames", "3", "--log-every", "0", *sets]) == 0
    assert (out / "weights.safetensors").is_file() and "2 steps" in capsys.readouterr().out
    for argv, message in ((["--play"], "drop --play"), (["--frames", "4", "6", "--batch", "2", "2"], "one clip length"),
                          (["--preset", "tiny"], "--vdt trains model.kind=vdt")):
        bad = tmp_path / "bad"
        assert main(["train", "--vdt", "--preset", "tiny-vdt", "--out", str(bad), "--steps", "1", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not bad.exists()
