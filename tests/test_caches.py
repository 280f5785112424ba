"""Feature caches (cache.kind): the state model, each kind on a tiny random model, pipeline stages
with the decision passed on (the DualParal layout in one process), config and calibration files."""
import copy
import json

import pytest
import torch

from framecast.config import ConfigError, load_config
from framecast.engine.denoise import Denoiser
from framecast.models.blocks import run_model
from framecast.models.caches import KINDS, cache_class, make_cache
from framecast.models.caches.state import TaylorFactors
from framecast.models.conditioning import Conditioning
from framecast.models.wan import WanModel
from framecast.parallel.stage import StageRunner, prune_blocks, split_layers
from framecast.schedulers.flow import FlowEuler
from framecast.schedulers.full import denoise_full

C, FR, H, W, STEPS = 3, 3, 8, 8, 12
KIND_NAMES = [k for k in KINDS if KINDS[k]]
CALIBRATION = {"teacache": {"coefficients": [0.0, 0.0, 0.0, 1.0, 0.0]}, "magcache": {"ratios": [1.0] * STEPS}}
# settings that reuse often on a 12-step trajectory (defaults are tuned for 50 steps)
EAGER = {"fbcache": dict(threshold=0.5, warmup=2), "teacache": dict(threshold=0.5, warmup=2),
         "magcache": dict(threshold=1.0, retention=0.1), "taylorseer": dict(interval=3, warmup=2),
         "cg_taylor": dict(threshold=0.5, warmup=3), "delta_dit": dict(interval=3, warmup=2)}
NEVER = {"fbcache": dict(threshold=0.0), "teacache": dict(threshold=0.0), "magcache": dict(threshold=0.0),
         "taylorseer": dict(interval=1), "cg_taylor": dict(threshold=0.0), "delta_dit": dict(interval=1)}


def tiny_model(layers=4):
    torch.manual_seed(0)
    return WanModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=C,
                    out_channels=C, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers).eval()


def new_cache(kind, **options):
    cls = cache_class(kind)
    return cls(cls.Options(**options), STEPS, CALIBRATION.get(kind))


def sampler():
    s = FlowEuler(shift=3.0)
    s.set_timesteps(STEPS)
    return s


def trajectory(model, cache, seed=0, guidance=3.0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(1, 5, 16, generator=g)
    den = Denoiser(model, text, torch.zeros_like(text), guidance, torch.float32, torch.device("cpu"), cache=cache)
    return denoise_full(den, torch.randn(1, C, FR, H, W, generator=g), sampler)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def uncached(model):
    return trajectory(model, None)


def test_kind_none_is_no_cache_and_the_default():
    cfg = load_config("tiny")
    assert cfg.cache.kind == "none" and make_cache(cfg) is None
    assert set(KINDS) == {"none", "taylorseer", "cg_taylor", "delta_dit", "fbcache", "teacache", "magcache"}


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_a_cache_that_never_reuses_is_exact(model, uncached, kind):
    cache = new_cache(kind, **NEVER[kind])
    assert torch.equal(trajectory(model, cache), uncached)
    assert cache.stats["reused"] == 0 and cache.stats["blocks"] >= STEPS * 4


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_each_kind_saves_blocks_and_stays_close(model, uncached, kind):
    cache = new_cache(kind, **EAGER[kind])
    out = trajectory(model, cache)
    assert cache.stats["reused"] > 0 and cache.stats["blocks"] < STEPS * 4
    assert not torch.equal(out, uncached)
    rel = (out - uncached).norm() / uncached.norm()
    assert rel < 0.25, f"{kind}: relative error {rel:.3f}"
    assert cache.state == {}  # each block's state goes after its last step


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_state_is_per_frame_block_and_reset_per_request(model, kind):
    """Two trajectories interleaved step by step under two block ids give what each gives alone."""
    alone = [trajectory(model, new_cache(kind, **EAGER[kind]), seed=s) for s in (1, 2)]
    cache = new_cache(kind, **EAGER[kind])
    dens, lats, samplers = [], [], []
    for s in (1, 2):
        g = torch.Generator().manual_seed(s)
        text = torch.randn(1, 5, 16, generator=g)
        dens.append(Denoiser(model, text, torch.zeros_like(text), 3.0, torch.float32, torch.device("cpu"),
                             cache=cache))
        lats.append(torch.randn(1, C, FR, H, W, generator=g))
        samplers.append(sampler())
    for i, t in enumerate(samplers[0].timesteps):
        for b in (0, 1):
            lats[b] = samplers[b].step(dens[b](lats[b], t, step=i, block=b), t, lats[b])
    assert torch.equal(lats[0], alone[0]) and torch.equal(lats[1], alone[1])
    # a request stopped half way leaves state behind; new_request() forgets it: the next
    # trajectory on the same cache object equals one on a fresh cache
    half = Denoiser(model, torch.randn(1, 5, 16), torch.zeros(1, 5, 16), 3.0, torch.float32, torch.device("cpu"),
                    cache=cache)
    lat, s = torch.randn(1, C, FR, H, W), sampler()
    for i, t in enumerate(s.timesteps[:3]):
        lat = s.step(half(lat, t, step=i, block=0), t, lat)
    assert cache.state
    cache.new_request()
    assert cache.state == {} and not cache.stats
    assert torch.equal(trajectory(model, cache, seed=1), alone[0])


def test_cfg_branches_keep_their_own_state(model):
    cache = new_cache("taylorseer", **EAGER["taylorseer"])
    x = torch.randn(2, C, FR, H, W)
    t = torch.tensor([500.0, 500.0])
    text = torch.randn(2, 5, 16)
    run_model(model, x, t, Conditioning(text), step=0, block=0, cache=cache)
    assert sorted(k for k in cache.state[0] if k != "shape") == [(i, "residual") for i in range(4)]
    key = (2, "residual")
    held = cache.state[0][key]
    assert held["factors"][0].shape[0] == 2  # one row per CFG branch: cond, uncond
    solo = new_cache("taylorseer", **EAGER["taylorseer"])
    run_model(model, x[1:], t[1:], Conditioning(text[1:]), step=0, block=0, cache=solo)
    torch.testing.assert_close(solo.state[0][key]["factors"][0], held["factors"][0][1:], rtol=0, atol=1e-6)


def test_taylor_factors_forecast_a_polynomial_exactly():
    f = lambda s: torch.tensor([3.0 + 2.0 * s - 0.5 * s * s])  # noqa: E731
    taylor = None
    for s in (0, 2, 4):
        taylor = TaylorFactors.update(taylor, f(s), s, order=2)
    assert len(taylor["factors"]) == 3
    # backward differences: exact for the line through the last two points plus the curvature term
    assert torch.allclose(TaylorFactors.forecast(taylor, 4), f(4))
    one = TaylorFactors.update(TaylorFactors.update(None, f(0), 0, 1), f(1), 1, 1)
    assert torch.allclose(TaylorFactors.forecast(one, 2), f(1) + (f(1) - f(0)))


# ---- pipeline stages: the decision made once and passed on ------------------------------------

def stages_for(model, split, kind):
    ranges = split_layers(len(model.blocks), len(split), split)
    out = []
    for r, layers in enumerate(ranges):
        shard = copy.deepcopy(model)
        prune_blocks(shard, layers)
        out.append(StageRunner(shard, layers, first=r == 0, last=r == len(split) - 1,
                               features=new_cache(kind, **EAGER[kind])))
    return out


def run_stages(stages, x, t, text, **item):
    h, given = None, None
    for r, stage in enumerate(stages):
        h = stage.run(x if r == 0 else torch.zeros_like(x), t, text, x_BLD=h, given=given, **item)
        given = stage.features.decided if r == 0 else given  # what the worker sends as a flag
    return h


@pytest.mark.parametrize("kind", KIND_NAMES)
@torch.no_grad()
def test_split_stages_with_cache_equal_one_stage(model, kind):
    """Two blocks of a DualParal-like sequence (each at its own step, the newer one's K/V as the
    older one's right context) over 1, 2 and 3 stages: equal to 1e-5, every stage of a pass
    deciding alike."""
    g = torch.Generator().manual_seed(3)
    text = torch.randn(2, 5, 16, generator=g)
    xs = [torch.randn(2, C, FR, H, W, generator=g) for _ in range(2)]
    results = []
    for split in ([4], [2, 2], [1, 2, 1]):
        stages = stages_for(model, split, kind)
        outs = []
        for i in range(STEPS + 1):
            for b in (1, 0):  # newest first, as a tick runs them
                step = i - b
                if not 0 <= step < STEPS:
                    continue
                t = torch.full((2,), 1000.0 * (1 - step / STEPS))
                x = xs[b] * (1 - 0.05 * step)
                outs.append(run_stages(stages, x, t, text, context_frames=1, keep_frames=1,
                                       use_cache=b == 0 and i >= 1, step=step, block=b))
                decisions = {s.features.decided for s in stages}
                assert len(decisions) == 1, f"{kind} split {split}: stages decided differently"
        results.append(torch.stack(outs))
        assert sum(s.features.stats["reused"] for s in stages[:1]) > 0
    for other in results[1:]:
        assert torch.equal(other, results[0])  # the same additions in the same order at any split


# ---- config and calibration -------------------------------------------------------------------

def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"cache.kind='fast' is not allowed; choose one of: none, taylorseer"):
        load_config("tiny", ["cache.kind=fast"])
    with pytest.raises(ConfigError, match=r"cache.taylorseer.interval=0 is out of range; must be >= 1"):
        load_config("tiny", ["cache.taylorseer.interval=0"])
    with pytest.raises(ConfigError, match=r"cache.kind=fbcache does not work with schedule.name=nfd"):
        load_config("tiny-play", ["schedule.name=nfd", "cache.kind=fbcache"])


def test_shipped_calibrations_load_for_tiny_at_50_steps():
    from framecast.engine.cache_calibration import load_calibration

    for kind in ("teacache", "magcache"):
        data = load_calibration(load_config("tiny", [f"cache.kind={kind}", "sampler.steps=50"]))
        assert data["steps"] == 50 and data["kind"] == kind
    assert load_calibration(load_config("tiny", ["cache.kind=taylorseer"])) is None


def test_mismatched_calibration_is_refused_in_one_line(tmp_path):
    from framecast.engine.cache_calibration import load_calibration

    with pytest.raises(ConfigError, match=r"was made for sampler.steps=50, this run has sampler.steps=10$"):
        load_calibration(load_config("tiny", ["cache.kind=magcache"]))
    other = ["cache.kind=magcache", "sampler.steps=50", "model.weights=", "model.init_seed=3"]
    with pytest.raises(ConfigError, match=r"cache.calibration=.*no shipped|needs cache.calibration"):
        load_calibration(load_config("tiny", other))
    with pytest.raises(ConfigError, match=r"was made for another model \(fingerprint \w+, this model \w+\)"):
        load_calibration(load_config("tiny", [*other, "cache.calibration=builtin:tiny"]))
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"format": "something"}))
    with pytest.raises(ConfigError, match="not a framecast.cache-calibration file"):
        load_calibration(load_config("tiny", ["cache.kind=teacache", f"cache.calibration={bad}"]))


def test_calibrate_cache_command_writes_a_file_the_cache_loads(tmp_path, capsys):
    from framecast.engine.cache_calibration import load_calibration
    from framecast.launch.cli import main

    out = tmp_path / "tiny.magcache.json"
    args = ["calibrate-cache", "sampler.steps=4", "--kind", "magcache", "--out", str(out), "--frames", "2",
            "--prompts", "a red circle moving right"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["version"] == 1 and len(data["ratios"]) == 4 and data["sampler"]["name"] == "euler"
    cfg = load_config("tiny", ["cache.kind=magcache", "sampler.steps=4", f"cache.calibration={out}"])
    assert load_calibration(cfg)["ratios"] == data["ratios"]
    assert main(args) == 2  # exists: refused without --overwrite
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("schedule", ["full", "rollout"])
def test_engine_schedules_use_the_configured_cache(schedule):
    """Through the Engine: the full schedule (two passes: lead frame, then the rest) and rollout
    (one trajectory per chunk) run with the cache; fewer blocks, a video close to the uncached one."""
    import numpy as np

    from framecast import Engine

    base = ["sampler.steps=10", f"schedule.name={schedule}"]
    plain = np.stack(list(Engine.from_preset("tiny", base).stream("a red circle moving right", frames=7, seed=1)))
    engine = Engine.from_preset("tiny", [*base, "cache.kind=taylorseer", "cache.taylorseer.interval=2",
                                         "cache.taylorseer.warmup=2"])
    made = []
    real = engine.feature_cache
    engine.feature_cache = lambda: made.append(real()) or made[-1]
    cached = np.stack(list(engine.stream("a red circle moving right", frames=7, seed=1)))
    (cache,) = made
    assert cache.stats["reused"] > 0 and cache.state == {}
    assert not np.array_equal(cached, plain)
    assert np.abs(cached.astype(float) - plain.astype(float)).mean() < 8  # uint8 levels


@pytest.mark.parametrize("argv, needle", [
    (["cache.kind=teacache"], "cache.calibration='builtin:tiny' was made for sampler.steps=50, this run has "
                              "sampler.steps=10"),
    (["cache.kind=magcache", "sampler.steps=50", "model.weights=", "cache.calibration=builtin:tiny"],
     "was made for another model"),
    (["cache.kind=taylorseer", "cache.taylorseer.order=-1"], "cache.taylorseer.order=-1 is out of range"),
])
def test_cli_refuses_a_bad_cache_in_one_line_before_model_work(tmp_path, capsys, monkeypatch, argv, needle):
    import os

    import framecast.engine.components as components
    from framecast.launch.cli import main

    def no_model(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(components, "build_model", no_model)
    monkeypatch.chdir(tmp_path)
    rc = main(["generate", "a red circle moving right", "--out", str(tmp_path / "v.mp4"), "--frames", "4",
               "--quiet", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.strip().count("\n") == 0, err
    assert os.listdir(tmp_path) == []
