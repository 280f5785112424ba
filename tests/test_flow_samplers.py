"""Flow samplers vs diffusers: schedules and whole trajectories (fp32 CPU, every step within 1e-6)."""
import copy

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from framecast.schedulers.flow import (SAMPLERS, FlowEuler, FlowUniPC, flow_schedule, flow_sigmas,
                                       make_sampler, noise_latents, sampler_from_diffusers_config,
                                       velocity_target)

ATOL = 1e-6
CASES = [(1, 3.0), (2, 3.0), (4, 5.0), (10, 3.0), (50, 3.0), (7, 1.0), (40, 16.0), (13, 2.7)]
SHAPE = (1, 4, 3, 8, 8)  # (B, C, F, H, W)


def fake_model(x, t):
    """A velocity that depends on the sample and the timestep."""
    return torch.sin(x * 1.3 + float(t) / 1000)


def ref_scheduler(kind, steps, shift, **kw):
    if kind == "euler":
        ref = FlowMatchEulerDiscreteScheduler(shift=shift, **kw)
    else:
        ref = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                      flow_shift=shift, **kw)
    ref.set_timesteps(steps)
    return ref


def ours_like(kind, steps, shift, **kw):
    ours = FlowEuler(shift=shift) if kind == "euler" else FlowUniPC(shift=shift, **kw)
    ours.set_timesteps(steps)
    return ours


def run_both(ref, ours, x):
    """Step both from the same start with the same fake model; max |diff| over all step outputs."""
    x_ref, x_ours, worst = x.clone(), x.clone(), 0.0
    for i, t in enumerate(ref.timesteps):
        assert ours.step_index == i
        assert ours.sigma == pytest.approx(float(ref.sigmas[i]), abs=0)
        x_ref = ref.step(fake_model(x_ref, t), t, x_ref, return_dict=False)[0]
        t_ours = ours.timesteps[i]
        x_ours = ours.step(fake_model(x_ours, t_ours), t_ours, x_ours)
        assert isinstance(x_ours, torch.Tensor) and x_ours.dtype == x.dtype
        worst = max(worst, (x_ref - x_ours).abs().max().item())
    assert ours.step_index == len(ref.timesteps) and ours.sigma == 0.0
    return worst, x_ours


@pytest.mark.parametrize("kind", ["euler", "unipc"])
@pytest.mark.parametrize("steps,shift", CASES)
def test_trajectory_matches_diffusers(kind, steps, shift):
    ref, ours = ref_scheduler(kind, steps, shift), ours_like(kind, steps, shift)
    assert ours.timesteps.dtype == torch.float32 and ours.timesteps.shape == (steps,)
    assert ours.sigmas.shape == (steps + 1,) and ours.sigmas[-1] == 0
    t_diff = (ours.timesteps - ref.timesteps.to(torch.float32)).abs().max().item()
    s_diff = (ours.sigmas - ref.sigmas).abs().max().item()
    worst, _ = run_both(ref, ours, torch.randn(SHAPE))
    print(f"\n{kind} steps={steps} shift={shift}: timesteps {t_diff:.3g} sigmas {s_diff:.3g} "
          f"max step diff {worst:.3g}")
    assert t_diff == 0.0 and s_diff == 0.0  # same float32 values
    assert worst <= ATOL


@pytest.mark.parametrize("kw", [dict(solver_order=1), dict(solver_order=3), dict(solver_type="bh1"),
                                dict(solver_order=1, lower_order_final=False),
                                dict(solver_order=3, solver_type="bh1"), dict(disable_corrector=[0, 3])])
def test_unipc_options_match_diffusers(kw):
    steps, shift = 12, 5.0
    ref = ref_scheduler("unipc", steps, shift, **kw)
    ours = ours_like("unipc", steps, shift, **kw)
    worst, out = run_both(ref, ours, torch.randn(SHAPE))
    print(f"\nunipc {kw}: max step diff {worst:.3g}")
    assert worst <= ATOL


def test_flow_sigmas_match_schedules():
    for steps, shift in CASES:
        u = ref_scheduler("unipc", steps, shift)
        e = ref_scheduler("euler", steps, shift)
        assert torch.equal(flow_sigmas(steps, shift), u.sigmas)
        assert torch.equal(flow_sigmas(steps, shift, variant="euler"), e.sigmas)
        assert torch.equal(flow_schedule(steps, shift)[1], u.timesteps.float())
    # §1.6 formula with the σ0 nudge: linspace(1, 1/1000, N+1)[:-1], shifted.
    s = flow_sigmas(50, 3.0)
    assert s[0].item() == pytest.approx(1 - 1e-6, abs=1e-7)
    with pytest.raises(ValueError, match="variant"):
        flow_sigmas(4, 3.0, variant="ddim")


def test_batch_of_samples_at_same_step():
    """A batch steps like each element alone (the usual case: one noise level for the batch)."""
    x = torch.randn(3, *SHAPE[1:])
    for name in SAMPLERS:
        whole = make_sampler(name, 3.0)
        whole.set_timesteps(6)
        parts = [copy.deepcopy(whole) for _ in range(3)]
        xs = [x[b:b + 1].clone() for b in range(3)]
        xw = x.clone()
        for t in whole.timesteps:
            xw = whole.step(fake_model(xw, t), t, xw)
            xs = [p.step(fake_model(xb, t), t, xb) for p, xb in zip(parts, xs)]
        assert (xw - torch.cat(xs)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_deepcopy_independent(name):
    proto = make_sampler(name, 5.0)
    proto.set_timesteps(8)
    x = torch.randn(SHAPE)

    # A: straight run; B: a copy taken mid-trajectory continues identically.
    a = copy.deepcopy(proto)
    xa, mid = x.clone(), None
    for i, t in enumerate(a.timesteps):
        if i == 4:
            mid = (copy.deepcopy(a), xa.clone())
        xa = a.step(fake_model(xa, t), t, xa)
    b, xb = mid
    assert b.step_index == 4
    for t in b.timesteps[4:]:
        xb = b.step(fake_model(xb, t), t, xb)
    assert torch.equal(xa, xb)

    # Two copies stepped differently (interleaved) do not interfere with each other or the proto.
    c1, c2 = copy.deepcopy(proto), copy.deepcopy(proto)
    x1, x2 = x.clone(), -x.clone()
    for t in c1.timesteps:
        x1 = c1.step(fake_model(x1, t), t, x1)
        x2 = c2.step(fake_model(x2, t) * 0.5, t, x2)
    assert torch.equal(x1, xa)
    assert proto.step_index == 0
    c3 = copy.deepcopy(proto)
    x3 = x.clone()
    for t in c3.timesteps:
        x3 = c3.step(fake_model(x3, t), t, x3)
    assert torch.equal(x3, xa)


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_reset_and_step_errors(name):
    s = make_sampler(name, 3.0)
    x = torch.randn(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 999.0, x)
    s.set_timesteps(3)
    with pytest.raises(ValueError, match="expects timestep"):
        s.step(x, s.timesteps[1], x)
    out1 = [x]
    for t in s.timesteps:
        out1.append(s.step(fake_model(out1[-1], t), t.item(), out1[-1]))  # python float t works
    with pytest.raises(RuntimeError, match="all 3 steps"):
        s.step(x, s.timesteps[-1], x)
    s.reset()
    assert s.step_index == 0 and s.sigma == float(s.sigmas[0])
    y = x
    for t in s.timesteps:
        y = s.step(fake_model(y, t), t, y)
    assert torch.equal(y, out1[-1])


def test_make_sampler_registry():
    assert isinstance(make_sampler("euler", 3.0), FlowEuler)
    u = make_sampler("unipc", 5.0, num_train_timesteps=1000)
    assert isinstance(u, FlowUniPC) and u.shift == 5.0
    with pytest.raises(ValueError, match="ddim, euler, euler-wan, unipc"):
        make_sampler("dpm-solver", 3.0)
    # euler-wan: Euler on Wan's sigmas, every step a real stretch (4 steps at shift 1: ~1, .75, .5, .25 -> 0)
    w = make_sampler("euler-wan", 1.0)
    w.set_timesteps(4)
    assert isinstance(w, FlowEuler)
    assert torch.allclose(w.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), atol=1e-3)  # linspace(1, 1/N)
    assert w.timesteps.tolist() == [999.0, 750.0, 500.0, 250.0]
    # diffusers gives inf there (λ = +inf at the last sigma); we refuse instead.
    with pytest.raises(ValueError, match="lower_order_final=False"):
        FlowUniPC(shift=3.0, lower_order_final=False)


@pytest.mark.parametrize("kind", ["euler", "unipc"])
def test_from_diffusers_config_round_trip(kind):
    steps, shift = 9, 5.0
    ref = ref_scheduler(kind, steps, shift)
    ours = sampler_from_diffusers_config(ref.config)  # live config: no _class_name
    assert type(ours) is (FlowEuler if kind == "euler" else FlowUniPC)
    assert ours.shift == shift
    ours.set_timesteps(steps)
    worst, _ = run_both(ref, ours, torch.randn(SHAPE))
    assert worst <= ATOL
    # scheduler_config.json form (with _class_name and _diffusers_version)
    cfg = {"_class_name": type(ref).__name__, "_diffusers_version": "0.42.0", **dict(ref.config)}
    assert type(sampler_from_diffusers_config(cfg)) is type(ours)


def test_from_wan_hub_config():
    cfg = {"_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0.dev0",
           "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [],
           "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
           "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True,
           "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False,
           "sample_max_value": 1.0, "solver_order": 2, "solver_p": None, "solver_type": "bh2",
           "steps_offset": 0, "thresholding": False, "timestep_spacing": "linspace",
           "trained_betas": None, "use_beta_sigmas": False, "use_dynamic_shifting": False,
           "use_exponential_sigmas": False, "use_flow_sigmas": True, "use_karras_sigmas": False}
    s = sampler_from_diffusers_config(cfg)
    assert isinstance(s, FlowUniPC) and s.shift == 3.0 and s.solver_order == 2


@pytest.mark.parametrize("cfg,field", [
    ({"_class_name": "PNDMScheduler", "num_train_timesteps": 1000}, "_class_name='PNDMScheduler'"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_dynamic_shifting": True},
     "use_dynamic_shifting=True"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "stochastic_sampling": True},
     "stochastic_sampling=True"),
    ({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True, "prediction_type": "epsilon"},
     "prediction_type='epsilon'"),
    ({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True,
      "prediction_type": "flow_prediction", "use_karras_sigmas": True}, "use_karras_sigmas=True"),
    ({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": False,
      "prediction_type": "flow_prediction"}, "use_flow_sigmas=False"),
    ({"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction"},
     "use_flow_sigmas missing"),
    ({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True,
      "prediction_type": "flow_prediction", "final_sigmas_type": "sigma_min"},
     "final_sigmas_type='sigma_min'"),
    ({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True,
      "prediction_type": "flow_prediction", "solver_order": 4}, "solver_order=4"),
    ({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True,
      "prediction_type": "flow_prediction", "flow_shfit": 3.0}, "unknown field flow_shfit=3.0"),
    ({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True,
      "prediction_type": "flow_prediction", "lower_order_final": False}, "lower_order_final=False"),
    ({"num_train_timesteps": 1000}, "_class_name missing"),
])
def test_from_diffusers_config_errors(cfg, field):
    with pytest.raises(ValueError) as e:
        sampler_from_diffusers_config(cfg)
    assert field in str(e.value)


def test_training_helpers_and_euler_convention():
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    assert torch.equal(noise_latents(x0, noise, 0.0), x0)
    assert torch.equal(noise_latents(x0, noise, 1.0), noise)
    v = velocity_target(x0, noise)
    assert torch.allclose(v, noise - x0)
    # Per-sample sigmas broadcast over the batch dim.
    xb, nb = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sig = torch.tensor([0.25, 0.75])
    got = noise_latents(xb, nb, sig)
    assert torch.allclose(got[1], 0.25 * xb[1] + 0.75 * nb[1])
    # With the exact velocity, Euler from x_σ lands on x_{σ_next} and the last step on x0.
    s = FlowEuler(shift=3.0)
    s.set_timesteps(5)
    x = noise_latents(x0, noise, s.sigma)
    for i, t in enumerate(s.timesteps):
        x = s.step(v, t, x)
        assert torch.allclose(x, noise_latents(x0, noise, float(s.sigmas[i + 1])), atol=1e-5)
    assert torch.allclose(x, x0, atol=1e-5)
    # UniPC is exact on straight-line flows too (x0 predictions are all equal to x0).
    u = FlowUniPC(shift=3.0)
    u.set_timesteps(5)
    x = noise_latents(x0, noise, u.sigma)
    for t in u.timesteps:
        x = u.step(v, t, x)
    assert torch.allclose(x, x0, atol=1e-5)
