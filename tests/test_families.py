"""Every model family under every schedule where it makes sense, or refused in one line before any work
(docs/model-zoo.md): VDT under DualParal (torchrun W=2 equals local W=1), Latte and VDT under rollout,
the refusals, global frame positions for families with additive positions, and `framecast info`."""
import numpy as np
import pytest
import torch

from cli_latents import PROMPT, generate_latents
from test_latte_schedules import LATTE

VDT = ["model.num_layers=3", "model.num_attention_heads=2", "model.attention_head_dim=8", "model.ffn_dim=32",
       "model.text_dim=16", "model.freq_dim=16"]
DUALPARAL = ["--frames", "10", "--schedule", "dualparal", "--block-frames", "4", "--context-frames", "2",
             "--steps", "3", "--seed", "5", "--quiet", "sampler.guidance_scale=3.0"]


@pytest.fixture(scope="module")
def vdt_weights(tmp_path_factory) -> list[str]:
    """tiny-vdt overrides with random world weights: a fresh VDT is adaLN-Zero (every block the identity,
    the head zero), so its zero-init layers get random values for every path to carry signal."""
    from framecast.config import load_config
    from framecast.world.vdt_training import save_random_vdt

    folder = tmp_path_factory.mktemp("vdt")
    save_random_vdt(load_config("tiny-vdt", VDT), folder)
    return VDT + [f"model.weights={folder}"]


def test_dualparal_vdt_w2_equals_w1(tmp_path, vdt_weights):
    from framecast.engine.video_io import read_video

    args = [*DUALPARAL, "--preset", "tiny-vdt", *vdt_weights]
    w1 = generate_latents(tmp_path, "w1", *args, "--launcher", "local")
    assert w1.shape == (1, 3, 10, 32, 32) and torch.isfinite(w1).all()
    w2 = generate_latents(tmp_path, "w2", *args, "--launcher", "torchrun", "--workers", "2")
    diff = (w2 - w1).abs().max().item()
    print(f"DualParal VDT W=2 vs W=1: max abs diff {diff:.3g}")
    assert diff <= 1e-5
    v1, v2 = (read_video(tmp_path / name).astype(np.int16) for name in ("w1", "w2"))  # the PNG frames
    assert v1.shape == v2.shape == (10, 32, 32, 3) and np.abs(v1 - v2).max() <= 1  # within one 8-bit level


SCHEDULES = {
    "rollout": ["schedule.name=rollout", "schedule.rollout.chunk_frames=3", "schedule.rollout.chunk_context=1"],
    "vin-no-tokens": ["schedule.name=vin", "schedule.vin.interface=none", "schedule.vin.chunk_frames=3",
                      "schedule.vin.overlap_frames=1"],
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("family", ["latte", "vdt"])
def test_schedule_runs_and_gives_the_exact_frame_count(family, schedule, vdt_weights, tmp_path):
    from framecast import Engine

    preset, overrides = ("tiny", LATTE) if family == "latte" else ("tiny-vdt", vdt_weights)
    engine = Engine.from_preset(preset, overrides + SCHEDULES[schedule] + ["sampler.steps=2"])
    assert type(engine.model).__name__ == {"latte": "LatteModel", "vdt": "VdtModel"}[family]
    engine.generate(PROMPT, frames=7, seed=1, out=f"{tmp_path}/frames/")
    assert len(list((tmp_path / "frames").glob("*.png"))) == 7


REFUSED = [  # (overrides, what the line must name)
    (["model.kind=latte", "schedule.name=nfd"], ("model.kind=latte", "schedule.name=nfd", "masks")),
    (["model.kind=latte", "schedule.name=vin"], ("model.kind=latte", "schedule.name=vin", "interface tokens")),
    (["model.kind=latte", "schedule.name=vin", "schedule.vin.interface=learned"],
     ("model.kind=latte", "schedule.name=vin", "interface tokens")),
    (["model.kind=vdt", "schedule.name=vin"], ("model.kind=vdt", "schedule.name=vin", "interface tokens")),
    (["model.kind=vdt", "schedule.name=vin", "schedule.vin.interface=learned"],
     ("model.kind=vdt", "schedule.name=vin", "interface tokens")),
    (["model.kind=latte", "schedule.name=full", "cache.kind=teacache"], ("model.kind=latte", "cache.kind=teacache")),
    (["model.kind=latte", "schedule.name=dualparal", "cache.kind=teacache"],
     ("model.kind=latte", "cache.kind=teacache")),
    (["model.kind=vdt", "schedule.name=rollout", "cache.kind=teacache"], ("model.kind=vdt", "cache.kind=teacache")),
]


@pytest.mark.parametrize("overrides, names", REFUSED, ids=lambda v: "-".join(v) if isinstance(v, list) else None)
def test_refused_combinations_give_one_line_before_any_work(overrides, names, monkeypatch):
    """Refused by the config check: the Engine never builds a model (no weights read, no worker started)."""
    from framecast import Engine
    from framecast.config import ConfigError
    from framecast.engine import components

    def no_model(*a, **k):
        raise AssertionError("a model was built for a refused combination")

    monkeypatch.setattr(components, "new_model", no_model)
    with pytest.raises(ConfigError) as e:
        Engine.from_preset("tiny", overrides + ["model.weights="])
    line = str(e.value)
    assert "\n" not in line and all(n in line for n in names), line


def test_refused_combination_on_the_command_line_is_one_line(capsys, tmp_path):
    from framecast.launch.cli import main

    rc = main(["generate", PROMPT, "--frames", "4", "--out", f"{tmp_path}/v/", "model.kind=latte", "schedule.name=nfd"])
    out, err = capsys.readouterr()
    assert rc != 0 and not (tmp_path / "v").exists()
    assert len(err.strip().splitlines()) == 1 and "model.kind=latte cannot run under schedule.name=nfd" in err


@pytest.mark.parametrize("overrides", [["model.kind=latte", "schedule.name=vin", "schedule.vin.interface=none"],
                                       ["model.kind=vdt", "schedule.name=vin", "schedule.vin.interface=none"],
                                       ["model.kind=vdt", "schedule.name=nfd"],
                                       ["model.kind=vdt", "cache.kind=fbcache"],
                                       ["model.kind=latte", "schedule.name=dualparal", "cache.kind=magcache"]])
def test_combinations_that_run_are_not_refused(overrides):
    from framecast.config import load_config

    load_config("tiny", overrides)


# ---- DualParal's context K/V with additive (absolute) temporal positions -------------------------

def tiny_family(kind: str):
    """One block (a Latte pair / a VDT block): its temporal K/V depend on each frame alone (and t)."""
    torch.manual_seed(0)
    if kind == "latte":
        from framecast.models.latte import LatteModel
        return LatteModel(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3, num_layers=1,
                          cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=8,
                          video_length=16).eval()
    from tiny_vdt import tiny_vdt
    return tiny_vdt(layers=1)


@pytest.mark.parametrize("kind", ["latte", "vdt"])
def test_right_context_kv_carries_the_positions_the_reader_sees_them_at(kind):
    """A DualParal stage embeds each window at its global frames (`first_frame`): the K/V the newer
    block keeps (its first own frames) then sit right after the reader's window, as in one pass over
    [reader window | those frames]. With window-local positions they would not."""
    from framecast.models.blocks import run_model
    from framecast.models.conditioning import Conditioning
    from framecast.parallel.stage import StageRunner

    model = tiny_family(kind)
    lat = torch.randn(1, 3, 12, 8, 8)
    text, t = torch.randn(1, 5, 8), torch.tensor([500.0])
    # reader: block frames [4, 8) with left context [2, 4); writer (newer block): frames [8, 12) with context [6, 8)
    # one pass over [reader window | the writer's first own frames], frames 2..9 at their places
    want = run_model(model, lat[:, :, 2:10], t, Conditioning(text, frame_positions=torch.arange(2, 10)))[:, :, :6]

    def dualparal(global_positions: bool):
        model.absolute_positions = global_positions  # this instance only
        stage = StageRunner(model, range(1), first=True, last=True)
        stage.run(lat[:, :, 6:12], t, text, context_frames=2, keep_frames=2, use_cache=False, first_frame=6)
        return stage.run(lat[:, :, 2:8], t, text, context_frames=2, keep_frames=2, use_cache=True, first_frame=2)

    torch.testing.assert_close(dualparal(True), want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dualparal(False), want, atol=1e-3)


def test_wan_stage_keeps_window_local_rotary_positions():
    """Wan's keys are placed by RoPE (relative): the stage gives it no frame positions."""
    from framecast.models.wan import WanModel
    assert WanModel.absolute_positions is False


# ---- framecast info ------------------------------------------------------------------------------

def test_info_lists_every_family_and_what_it_runs_under(capsys):
    from framecast.launch.cli import main
    from framecast.models.registry import FAMILIES

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    section = out.split("model families (model.kind")[1]
    blocks = {kind: _block(section, kind) for kind in FAMILIES}
    assert all(blocks.values()), blocks  # every registered family has its block

    def supported(kind):
        line = next(l for l in blocks[kind] if l.startswith("schedules: "))
        return line.removeprefix("schedules: ").split(", ")

    assert {"full", "rollout", "dualparal", "nfd", "vin"} <= set(supported("wan"))
    assert "nfd" not in supported("latte") and "vin" not in supported("latte")
    assert any("refused schedule.name=nfd: model.kind=latte" in l for l in blocks["latte"])
    assert "vin" not in supported("vdt") and "nfd" in supported("vdt")
    assert any(l.startswith("tasks: predict") for l in blocks["vdt"])
    caches = next(l for l in blocks["vdt"] if l.startswith("feature caches: "))
    assert "teacache" not in caches and "fbcache" in caches


def _block(section: str, kind: str) -> list[str]:
    """The lines of one family's block in the info section (stripped), up to the next family."""
    lines, inside = [], False
    for line in section.splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            inside = line.startswith(f"  {kind}: ")
        elif inside and line.startswith("    "):
            lines.append(line.strip())
        elif not line.startswith("  "):
            inside = False
    return lines
