"""DDIM sampler against diffusers' DDIMScheduler, step by step (LattePipeline's use of it)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler  # noqa: E402

from framecast.schedulers.ddim import DDIM, ddim_from_diffusers_config  # noqa: E402
from framecast.schedulers.flow import make_sampler, sampler_from_diffusers_config  # noqa: E402

LATTE = dict(beta_start=1e-4, beta_end=2e-2, beta_schedule="linear", prediction_type="epsilon", clip_sample=False,
             set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")


def run_both(ref_cfg: dict, steps: int, out_channels: int = 8):
    """Drive both samplers with the same (fake, learned-variance) model outputs; yield per-step max diffs."""
    ref = DDIMScheduler(**ref_cfg)
    ref.set_timesteps(steps)
    ours = sampler_from_diffusers_config(dict(ref.config))
    ours.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ref.timesteps)
    g = torch.Generator().manual_seed(0)
    x_ref = x_ours = torch.randn(1, 4, 3, 6, 6, generator=g)
    diffs = []
    for t in ref.timesteps:
        out = torch.randn(1, out_channels, 3, 6, 6, generator=g)
        eps = out.chunk(2, dim=1)[0] if out_channels == 8 else out  # LattePipeline for a DDIM scheduler
        x_ref = ref.step(eps, t, x_ref, eta=0.0, return_dict=False)[0]
        x_ours = ours.step(out, t, x_ours)
        diffs.append((x_ours - x_ref).abs().max().item())
    return diffs, x_ref


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_equal_to_diffusers_latte_config(steps):
    diffs, x = run_both(LATTE, steps)
    print(f"{steps} steps: max abs diff per run {max(diffs):.2e} (|x| max {x.abs().max().item():.2f})")
    assert max(diffs) <= 1e-5


@pytest.mark.parametrize("over", [
    {"timestep_spacing": "trailing"}, {"timestep_spacing": "linspace"}, {"steps_offset": 1},
    {"set_alpha_to_one": False}, {"beta_schedule": "scaled_linear", "beta_end": 0.012, "beta_start": 0.00085},
    {"prediction_type": "v_prediction"}, {"clip_sample": True},
])
def test_equal_to_diffusers_other_options(over):
    diffs, _ = run_both({**LATTE, **over}, 10, out_channels=4)
    assert max(diffs) <= 1e-5, over


def test_registry_and_config_errors():
    s = make_sampler("ddim", shift=3.0)
    s.set_timesteps(50)
    assert isinstance(s, DDIM) and s.timesteps[0] == 980 and s.timesteps[-1] == 0
    with pytest.raises(ValueError, match="thresholding"):
        ddim_from_diffusers_config({**LATTE, "thresholding": True})
    with pytest.raises(ValueError, match="unknown field"):
        ddim_from_diffusers_config({**LATTE, "bogus": 1})
    with pytest.raises(ValueError, match="expects timestep 980"):
        s.step(torch.zeros(1, 4), 960, torch.zeros(1, 4))
