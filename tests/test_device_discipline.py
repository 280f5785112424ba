"""Device discipline without a GPU: `device_model.SimulatedGpu` treats "cuda" as a device of its
own (tensors really on the CPU), refuses any op that mixes it with host tensors, and records
host-to-device moves. A whole DualParal request (resume included), the full, rollout and nfd
schedules run under it with device=cuda: nothing mixes, and request data moves to the device once
(each block's noise once; no per-step copies)."""
import types

import pytest
import torch

from device_model import DeviceMix, SimulatedGpu

PROMPT = "a red circle moving right"
DUALPARAL = ["device=cuda", "schedule.name=dualparal", "schedule.dualparal.block_frames=4",
             "schedule.dualparal.context_frames=2", "sampler.steps=3", "sampler.name=unipc",
             "sampler.guidance_scale=3.0"]


@pytest.fixture
def gpu(monkeypatch):
    """device=cuda resolves to torch.device("cuda"), CUDA's synchronisation calls are no-ops."""
    import framecast.engine.components as components

    real = components.resolve_device
    monkeypatch.setattr(components, "resolve_device",
                        lambda name: torch.device("cuda") if name.startswith("cuda") else real(name))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: types.SimpleNamespace(synchronize=lambda: None))
    with SimulatedGpu() as mode:
        yield mode


def test_the_simulated_gpu_refuses_what_cuda_refuses(gpu):
    a = torch.ones(4, 4, device="cuda")
    assert a.is_cuda and a.device.type == "cuda" and not torch.ones(2).is_cuda
    b = a * torch.tensor(2.0) + a.sum()                      # host 0-d scalars combine, as on CUDA
    assert b.is_cuda
    with pytest.raises(DeviceMix, match="mixed with host"):
        a + torch.ones(4, 4)
    with pytest.raises(DeviceMix, match="mixed with host"):
        torch.cat([a, torch.ones(4, 4)])
    with pytest.raises(DeviceMix, match="numpy"):
        a.numpy()
    host = a.cpu()
    assert not host.is_cuda and host.numpy().shape == (4, 4)
    layer = torch.nn.Linear(4, 4).to("cuda")
    assert layer.weight.is_cuda and layer(a).is_cuda
    with pytest.raises(DeviceMix):
        layer(torch.ones(1, 4))
    gpu.h2d.clear()
    torch.ones(100).to("cuda")
    assert len(gpu.h2d) == 1 and gpu.h2d[0][0] == (100,)


def _block_moves(gpu, shape):
    return [s for s, _ in gpu.h2d if s == shape]


def test_dualparal_request_and_resume_keep_devices_apart(gpu, tmp_path, monkeypatch):
    from framecast import Engine
    from framecast.engine.resume import ResumeRecord

    engine = Engine.from_preset("tiny", DUALPARAL)
    with engine:
        engine.generate(PROMPT, frames=14, seed=5, out=f"{tmp_path}/warm/")  # workers and weights load
        gpu.h2d.clear()
        engine.generate(PROMPT, frames=14, seed=5, out=f"{tmp_path}/a/", latents_out=tmp_path / "a.pt")
        blocks = 4  # 14 latent frames in blocks of 4 (the last 2)
        noise = _block_moves(gpu, (1, 3, 4, 32, 32)) + _block_moves(gpu, (1, 3, 2, 32, 32))
        assert len(noise) == blocks, gpu.h2d                # each block's noise moved once
        assert len(gpu.h2d) <= blocks + 4, gpu.h2d          # nothing per step (3 steps x 4 blocks)

        # interrupted after its first resume point, then resumed: same latents
        real_save, saves = ResumeRecord.save, []

        def save_then_stop(self, state, finished):
            real_save(self, state, finished)
            saves.append(1)
            raise KeyboardInterrupt("stopped after the first resume point")

        monkeypatch.setattr(ResumeRecord, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            engine.generate(PROMPT, frames=14, seed=5, out=f"{tmp_path}/b/")
        monkeypatch.setattr(ResumeRecord, "save", real_save)
        engine.generate(PROMPT, frames=14, seed=5, out=f"{tmp_path}/b/", resume=True,
                        latents_out=tmp_path / "b.pt")
    assert saves == [1]
    assert torch.equal(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt"))


@pytest.mark.parametrize("schedule", ["full", "rollout"])
def test_text_schedules_keep_devices_apart(gpu, tmp_path, schedule):
    from framecast import Engine

    engine = Engine.from_preset("tiny", ["device=cuda", f"schedule.name={schedule}", "sampler.steps=3",
                                         "sampler.name=unipc"])
    engine.generate(PROMPT, frames=8, seed=1, out=f"{tmp_path}/warm/")
    gpu.h2d.clear()
    engine.generate(PROMPT, frames=8, seed=1, out=f"{tmp_path}/v/")
    assert [s for s, _ in gpu.h2d] == [(1, 3, 8, 32, 32)], gpu.h2d  # the initial noise, once


def test_nfd_keeps_devices_apart(gpu, tmp_path):
    from framecast import Engine

    engine = Engine.from_preset("tiny-play", ["device=cuda", "schedule.nfd.context_sigma=0.05"])
    actions = ["none", "right", "right", "up", "up", "left"]
    engine.generate("", frames=6, actions=actions, out=f"{tmp_path}/warm/")
    gpu.h2d.clear()
    engine.generate("", frames=6, actions=actions, out=f"{tmp_path}/v/")
    # one frame's noise per generated frame, one context noise per committed frame, the start frame
    assert len(gpu.h2d) <= 2 * len(actions) + 1, gpu.h2d


@pytest.mark.parametrize("interface", ["pooled", "learned"])
def test_vin_keeps_devices_apart(gpu, tmp_path, interface):
    """VIN on one worker (its keyframes, interface module, fusion and final cross-fade on the device):
    nothing mixes, and each chunk's window of noise moves once; nothing per step."""
    from framecast import Engine

    overrides = ["device=cuda", "schedule.name=vin", "schedule.vin.chunk_frames=4", "schedule.vin.overlap_frames=2",
                 f"schedule.vin.interface={interface}", "sampler.steps=3", "sampler.name=unipc",
                 "sampler.guidance_scale=3.0"]
    if interface == "learned":
        from framecast.config import load_config
        from framecast.world.train import save_weights
        from framecast.world.vin_training import build_vin_nets

        save_weights(build_vin_nets(load_config("tiny-vin"), "builtin:tiny", seed=0), tmp_path / "w.safetensors")
        overrides.append(f"model.weights={tmp_path / 'w.safetensors'}")
    with Engine.from_preset("tiny-vin" if interface == "learned" else "tiny", overrides) as engine:
        engine.generate(PROMPT, frames=10, seed=1, out=f"{tmp_path}/warm/")
        gpu.h2d.clear()
        engine.generate(PROMPT, frames=10, seed=1, out=f"{tmp_path}/v/")
    windows = [(1, 3, 4, 32, 32), (1, 3, 6, 32, 32), (1, 3, 4, 32, 32)]  # [0,4), [2,8), [6,10)
    moved = [s for s, _ in gpu.h2d]
    assert [s for s in moved if len(s) == 5] == windows, gpu.h2d
    assert len(moved) <= len(windows) + 4, gpu.h2d  # plus a few request constants (text, weights), no per-step copies
