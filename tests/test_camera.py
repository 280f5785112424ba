"""The camera adapter: Plücker rays (a hand-computed case and their properties), the adapter
(zero at init: the wrapped model exactly unchanged; the Wan lineage's shapes), named moves, pose
files and their one-line errors, and the engine/CLI path (`--camera`, `--camera-file`)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.config import load_config
from framecast.models.camera import (CameraAdapter, CameraModel, camera_rays, group_frames, plucker)
from framecast.models.camera_poses import (CameraError, load_pose_file, parse_move, resolve_camera,
                                           to_json, trajectory)
from framecast.models.conditioning import Conditioning

PROMPT = "a red circle still"


def rot_y(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def pose(R=np.eye(3), t=(0, 0, 0)):
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, t
    return m


# ---- Plücker ----------------------------------------------------------------------------------

def test_plucker_hand_computed():
    K = np.array([[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]])
    # frame 0 anywhere: rays are relative to it; frame 1 = frame 0 moved by (1, 0, 0) in its own axes
    # then turned 90 degrees about y
    f0 = pose(rot_y(30), (3, -2, 5))
    f1 = f0 @ pose(rot_y(90), (1, 0, 0))
    rays = plucker(np.stack([K, K]), np.stack([f0, f1]), 2, 2).double()
    assert rays.shape == (6, 2, 2, 2)
    d_cam = np.array([-0.25, -0.25, 1.0]) / np.sqrt(1.125)            # pixel (0, 0): centre (0.5, 0.5)
    # frame 0: identity pose -> d = d_cam, o = 0
    np.testing.assert_allclose(rays[3:, 0, 0, 0], d_cam, atol=1e-6)
    np.testing.assert_allclose(rays[:3, 0], 0, atol=1e-6)
    # frame 1: d = R_y(90) d_cam = (dz, dy, -dx); o = (1, 0, 0); m = o x d = (0, -d_z', d_y')
    d1 = np.array([d_cam[2], d_cam[1], -d_cam[0]])
    np.testing.assert_allclose(rays[3:, 1, 0, 0], d1, atol=1e-6)
    np.testing.assert_allclose(rays[:3, 1, 0, 0], np.cross([1, 0, 0], d1), atol=1e-6)
    # pixel (row 1, col 0): centre (u, v) = (0.5, 1.5)
    d_cam10 = np.array([-0.25, 0.25, 1.0]) / np.sqrt(1.125)
    np.testing.assert_allclose(rays[3:, 0, 1, 0], d_cam10, atol=1e-6)


def test_plucker_properties():
    rng = np.random.default_rng(0)
    poses = []
    for _ in range(4):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        poses.append(pose(q, rng.normal(size=3)))
    K = np.stack([np.array([[20.0 + i, 0, 8], [0, 18.0, 6], [0, 0, 1]]) for i in range(4)])
    rays = plucker(K, np.stack(poses), 12, 16).double()
    m, d = rays[:3], rays[3:]
    torch.testing.assert_close(d.norm(dim=0), torch.ones(4, 12, 16, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close((m * d).sum(0), torch.zeros(4, 12, 16, dtype=torch.float64), atol=1e-5, rtol=0)
    assert m[:, 0].abs().max() < 1e-6                                   # frame 0 at the origin
    # a rigid change of world coordinates changes nothing (poses are relative to frame 0)
    g = pose(rot_y(47), (10, 2, -3))
    moved = plucker(K, np.stack([g @ p for p in poses]), 12, 16).double()
    torch.testing.assert_close(moved, rays, atol=1e-5, rtol=0)


def test_group_frames_stacks_the_temporal_stride_on_channels():
    rays = torch.arange(6 * 9, dtype=torch.float32).reshape(6, 9, 1, 1).expand(6, 9, 2, 3)
    g = group_frames(rays, 4)                                            # 9 frames = 1 + 4·2 -> 3 latent frames
    assert g.shape == (24, 3, 2, 3)
    for c in range(6):
        for k in range(4):
            assert torch.equal(g[c * 4 + k, 0], rays[c, 0])                # frame 0 fills the first latent frame
            assert torch.equal(g[c * 4 + k, 1], rays[c, 1 + k])
            assert torch.equal(g[c * 4 + k, 2], rays[c, 5 + k])
    assert group_frames(rays, 1) is rays
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        group_frames(rays[:, :8], 4)


# ---- adapter ----------------------------------------------------------------------------------

def tiny_cfg(*extra):
    return load_config("tiny", ["model.weights=", "model.num_layers=2", *extra])


def test_adapter_at_init_leaves_the_model_exactly_unchanged():
    from framecast.engine.components import new_model
    from framecast.models.blocks import run_model

    cfg = tiny_cfg()
    torch.manual_seed(0)
    base = new_model(cfg).eval()
    model = CameraModel(base, CameraAdapter.for_config(cfg)).eval()
    g = torch.Generator().manual_seed(1)
    lat, text = torch.randn(2, 3, 3, 32, 32, generator=g), torch.randn(2, 16, 64, generator=g)
    rays = camera_rays(trajectory("pan-left:2", 3, 32, 32), 1, 32, 32).expand(2, -1, -1, -1, -1)
    t = torch.tensor([500.0, 200.0])
    with torch.no_grad():
        plain = run_model(base, lat, t, Conditioning(text))
        cam = run_model(model, lat, t, Conditioning(text, camera_BRFHW=rays))
        none = run_model(model, lat, t, Conditioning(text))
    assert torch.equal(cam, plain) and torch.equal(none, plain)
    with torch.no_grad():  # a trained adapter does change the tokens, through the same path
        model.adapter.conv.weight.normal_()
        moved = run_model(model, lat, t, Conditioning(text, camera_BRFHW=rays))
    assert not torch.allclose(moved, plain)
    assert model.blocks is base.blocks and model.patch_size == base.patch_size   # the wrapped model's contract


def test_adapter_gets_gradients_at_zero_init():
    cfg = tiny_cfg()
    adapter = CameraAdapter.for_config(cfg)
    rays = camera_rays(trajectory("zoom-in:1", 2, 32, 32), 1, 32, 32)
    adapter(rays).sum().backward()
    assert adapter.conv.weight.grad.abs().sum() > 0                      # through the residual skip


def test_adapter_has_the_wan_lineage_shapes():
    cfg = load_config("wan2.1-t2v-1.3b", ["model.num_attention_heads=2", "model.attention_head_dim=8"])
    adapter = CameraAdapter.for_config(cfg)                              # R = 6·4, PixelUnshuffle(8), kernel 2
    assert adapter.conv.weight.shape == (16, 24 * 64, 2, 2)
    assert adapter.residual_blocks[0].conv1.weight.shape == (16, 16, 3, 3)
    rays = camera_rays(trajectory("pan-up:3", 9, 32, 48), 4, 32, 48)     # 9 frames -> 3 latent frames
    assert rays.shape == (1, 24, 3, 32, 48)
    assert adapter(rays).shape == (1, 3 * 2 * 3, 16)                     # tokens: 3 x (32/16) x (48/16)


def test_rays_made_per_window_equal_the_whole_videos():
    """CameraRays.window (what a schedule's window reads, so a minute of rays is never held) equals
    those latent frames of the whole video's rays, poses relative to the video's frame 0, for
    every window and temporal stride."""
    from framecast.models.camera import CameraRays

    for ts, video_frames, move in ((1, 7, "pan-left:2"), (4, 13, "zoom-in:1"), (4, 13, "pan-up:3")):
        poses = trajectory(move, video_frames, 32, 48)
        whole = group_frames(plucker(poses.K_F33, poses.c2w_F44, 32, 48), ts)[None]   # straight from the poses
        rays = CameraRays(poses, ts, 32, 48)
        assert rays.frames == whole.shape[2] == 1 + (video_frames - 1) // ts
        for start in range(rays.frames):
            for stop in range(start + 1, rays.frames + 1):
                assert torch.equal(rays.window(range(start, stop)), whole[:, :, start:stop]), (move, start, stop)
    for bad in (range(0, 5), range(2, 2), range(-1, 1)):
        with pytest.raises(ValueError, match="the video has 4"):
            rays.window(bad)


def test_family_without_a_token_grid_refuses_a_camera_adapter():
    from framecast.config import ConfigError

    with pytest.raises(ConfigError, match="model.kind=vdt does not expose"):
        load_config("tiny-vdt", ["camera.weights=builtin:tiny-camera"])



# ---- camera LoRA ------------------------------------------------------------------------------

def lora_pair(rank=4, targets="self"):
    """(base, model without LoRA, model with a rank-`rank` LoRA of `targets`, inputs): both adapters share
    the same nonzero conv weights; the LoRA's up and down weights are nonzero."""
    from framecast.engine.components import new_model

    torch.manual_seed(0)
    base = new_model(tiny_cfg()).eval()
    plain_adapter = CameraAdapter.for_config(tiny_cfg())
    lora_adapter = CameraAdapter.for_config(tiny_cfg(f"camera.lora_rank={rank}", f"camera.lora_targets={targets}"))
    with torch.no_grad():
        plain_adapter.conv.weight.normal_(std=0.02)
        for p in lora_adapter.lora.parameters():
            p.normal_(std=0.05)
    lora_adapter.load_state_dict(plain_adapter.state_dict(), strict=False)   # the same conv and residual blocks
    g = torch.Generator().manual_seed(1)
    lat, text = torch.randn(2, 3, 3, 32, 32, generator=g), torch.randn(2, 16, 64, generator=g)
    rays = camera_rays(trajectory("pan-left:2", 3, 32, 32), 1, 32, 32).expand(2, -1, -1, -1, -1)
    inputs = (lat, torch.tensor([500.0, 200.0]), text, rays)
    return base, CameraModel(base, plain_adapter).eval(), CameraModel(base, lora_adapter).eval(), inputs


def test_camera_lora_acts_only_in_passes_with_rays():
    from framecast.models.blocks import run_model

    base, plain, lora, (lat, t, text, rays) = lora_pair()
    assert isinstance(lora.blocks, tuple) and [b.layer_id for b in lora.blocks] == [0, 1]
    assert len(lora.state_dict()) == len(base.state_dict()) + len(lora.adapter.state_dict())  # no duplicate keys
    with torch.no_grad():
        frozen = run_model(base, lat, t, Conditioning(text))
        no_rays = run_model(lora, lat, t, Conditioning(text))
        adapter_only = run_model(plain, lat, t, Conditioning(text, camera_BRFHW=rays))
        with_lora = run_model(lora, lat, t, Conditioning(text, camera_BRFHW=rays))
        for layer in lora.adapter.lora:
            for name in layer:
                layer[name].up.weight.zero_()
        zero_up = run_model(lora, lat, t, Conditioning(text, camera_BRFHW=rays))
    assert (no_rays - frozen).abs().max().item() == 0.0                   # the LoRA is nonzero, but no rays
    assert not torch.allclose(adapter_only, frozen)                       # the adapter acts with rays ...
    assert (with_lora - adapter_only).abs().max() > 1e-3                  # ... and the LoRA on top of it
    assert (zero_up - adapter_only).abs().max() <= 1e-6                   # a zero LoRA adds nothing


@pytest.mark.parametrize("targets", ["self", "all"])
def test_camera_lora_merge_equals_a_block_with_the_merged_weights(targets):
    import copy

    from framecast.models.camera import LORA_TARGETS

    base, _, model, (lat, t, text, rays) = lora_pair(targets=targets)
    assert len(model.adapter.lora[0]) == {"self": 4, "all": 10}[targets]
    x_BLD, ctx = model.embed(lat, t, Conditioning(text, camera_BRFHW=rays))
    assert ctx.camera
    for block, layer in zip(model.blocks, model.adapter.lora):
        reference = copy.deepcopy(block.block)                           # the WanBlock, weights merged by hand
        state = reference.state_dict()
        for name, (key, _, _) in LORA_TARGETS[targets].items():
            state[key] = state[key] + layer[name].up.weight @ layer[name].down.weight
        reference.load_state_dict(state)
        with torch.no_grad():
            assert (block(x_BLD, ctx) - reference(x_BLD, ctx)).abs().max() <= 1e-6
            assert (block(x_BLD, ctx) - block.block(x_BLD, ctx)).abs().max() > 1e-4
    model.to(torch.float64)                                               # .to reaches the wrapped blocks' weights
    assert all(p.dtype == torch.float64 for b in model.blocks for p in b.parameters())


def test_camera_lora_weights_round_trip(tmp_path):
    from framecast.models.camera import load_camera_adapter
    from framecast.world.train import save_weights

    cfg = load_config("tiny-camera")
    assert cfg.camera.lora_rank == 16
    torch.manual_seed(0)
    adapter = CameraAdapter.for_config(cfg)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    assert adapter.lora[5]["o"].up.weight.shape == (128, 16)             # 6 blocks x (q, k, v, o), width 128
    path = tmp_path / "weights.safetensors"
    save_weights(torch.nn.ModuleDict({"camera": adapter}), path)        # as `framecast train --camera` saves
    loaded = load_camera_adapter(load_config("tiny-camera", [f"camera.weights={path}"]))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in adapter.state_dict().items())
    for wrong, named in ((["camera.lora_rank=8"], "this config has camera.lora_rank=8 camera.lora_targets=self"),
                         (["camera.lora_rank=0"], "this config has camera.lora_rank=0"),
                         (["camera.lora_targets=all"], "this config has camera.lora_rank=16 camera.lora_targets=all")):
        with pytest.raises(ValueError, match="do not match this model's camera adapter") as err:
            load_camera_adapter(load_config("tiny-camera", [f"camera.weights={path}", *wrong]))
        assert len(str(err.value).splitlines()) == 1
        assert "trained with camera.lora_rank=16 camera.lora_targets=self" in str(err.value) and named in str(err.value)
    everywhere = CameraAdapter.for_config(load_config("tiny-camera", ["camera.lora_rank=4", "camera.lora_targets=all"]))
    save_weights(torch.nn.ModuleDict({"camera": everywhere}), path)
    with pytest.raises(ValueError, match="trained with camera.lora_rank=4 camera.lora_targets=all, this config has "
                                         "camera.lora_rank=16 camera.lora_targets=self"):
        load_camera_adapter(load_config("tiny-camera", [f"camera.weights={path}"]))
    plain = CameraAdapter.for_config(load_config("tiny-camera", ["camera.lora_rank=0"]))
    save_weights(torch.nn.ModuleDict({"camera": plain}), path)
    with pytest.raises(ValueError, match="trained with camera.lora_rank=0, this config has camera.lora_rank=16"):
        load_camera_adapter(load_config("tiny-camera", [f"camera.weights={path}"]))


def test_camera_lora_rank_is_checked():
    from framecast.config import ConfigError
    from framecast.engine.components import new_model

    with pytest.raises(ConfigError, match="camera.lora_rank=-1 is out of range; must be >= 0"):
        tiny_cfg("camera.lora_rank=-1")
    adapter = CameraAdapter.for_config(tiny_cfg("camera.lora_rank=2"))   # 2 layers
    with pytest.raises(ValueError, match="camera LoRA has 2 layers; the model has 1 blocks"):
        CameraModel(new_model(tiny_cfg("model.num_layers=1")), adapter)

# ---- moves ------------------------------------------------------------------------------------

def test_moves():
    assert parse_move("pan-left:2").speed == 2 and parse_move("PAN-RIGHT").speed == 1
    assert parse_move("still").speed == 0
    p = trajectory("pan-left:2", 5, 32, 32)
    np.testing.assert_allclose(p.c2w_F44[:, 0, 3], -2 * np.arange(5) / 32)   # the camera goes left
    np.testing.assert_allclose(p.c2w_F44[:, :3, :3], np.tile(np.eye(3), (5, 1, 1)))
    z = trajectory("zoom-in:1", 3, 32, 32)
    assert z.K_F33[1, 0, 0] / z.K_F33[0, 0, 0] == pytest.approx(1 + 2 / 32)   # the edge moves 1 px
    assert (trajectory("zoom-out:1", 3, 32, 32).K_F33[:, 0, 0] < 32.0001).all()
    assert len(trajectory("still", 7, 32, 32)) == 7


@pytest.mark.parametrize("spec,message", [
    ("dolly-in:2", "unknown camera move 'dolly-in:2'; moves: pan-left, pan-right"),
    ("pan-left:abc", "is not a number"), ("pan-left:-1", "must be in (0, 64]"), ("pan-left:0", "must be in"),
    ("pan-left:nan", "must be in"), ("pan-left:inf", "must be in"), ("still:3", "still takes no speed")])
def test_bad_moves_are_one_line(spec, message):
    with pytest.raises(CameraError) as e:
        parse_move(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_zoom_out_faster_than_half_the_frame_is_refused():
    with pytest.raises(CameraError, match="half the width"):
        trajectory("zoom-out:16", 3, 32, 32)


# ---- pose files -------------------------------------------------------------------------------

def write(tmp_path, data, name="poses.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_pose_file_round_trip_and_fx_form(tmp_path):
    poses = trajectory("pan-down:1.5", 6, 32, 32)
    back = load_pose_file(write(tmp_path, to_json(poses)))
    np.testing.assert_array_equal(back.K_F33, poses.K_F33)
    np.testing.assert_array_equal(back.c2w_F44, poses.c2w_F44)
    short = {"frames": [{"fx": 32, "fy": 32, "cx": 16, "cy": 16, "c2w": [[1, 0, 0, 0.1], [0, 1, 0, 0], [0, 0, 1, 0]]}]}
    one = load_pose_file(write(tmp_path, short, "short.json"))
    assert one.K_F33[0, 0, 2] == 16 and one.c2w_F44[0, 0, 3] == 0.1 and one.c2w_F44[0, 3, 3] == 1


def frames_json(n, c2w=None, at=None):
    good = {"K": [[32, 0, 16], [0, 32, 16], [0, 0, 1]], "c2w": np.eye(4).tolist()}
    frames = [dict(good) for _ in range(n)]
    if at is not None:
        frames[at] = {**good, "c2w": c2w}
    return {"frames": frames}


@pytest.mark.parametrize("data,message", [
    ("{not json", "malformed JSON"),
    ({"poses": []}, "expected {\"frames\""),
    (frames_json(4, (2 * np.eye(4)).tolist(), at=2), "frame 2 c2w"),
    (frames_json(4, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], at=1), "frame 1 c2w: the 3x3 part is not a rotation"),
    (frames_json(3, [[1, 0, 0], [0, 1, 0]], at=0), "frame 0 c2w has shape [2, 3]"),
    (frames_json(3, [[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0]], at=0), "non-finite"),
    ({"frames": [{"K": [[32, 0, 16], [0, 32, 16], [0, 0, 1]]}]}, "has no \"c2w\""),
    ({"frames": [{"fx": 32, "c2w": np.eye(4).tolist()}]}, "no fy, cx, cy"),
    ({"frames": [{"K": [[-1, 0, 16], [0, 32, 16], [0, 0, 1]], "c2w": np.eye(4).tolist()}]}, "focal lengths must be > 0")])
def test_bad_pose_files_are_one_line(tmp_path, data, message):
    text = data if isinstance(data, str) else json.dumps(data).replace("NaN", "NaN")
    with pytest.raises(CameraError) as e:
        load_pose_file(write(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_fewer_poses_than_frames(tmp_path):
    path = write(tmp_path, to_json(trajectory("still", 4, 32, 32)))
    with pytest.raises(CameraError, match="4 poses for a video of 9 frames"):
        resolve_camera(Path(path), 9, 32, 32)
    assert len(resolve_camera(Path(path), 3, 32, 32)) == 3
    with pytest.raises(CameraError, match="does not exist"):
        resolve_camera(tmp_path / "missing.json", 3, 32, 32)


# ---- engine and CLI ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zero_adapter(tmp_path_factory):
    """An untrained (zero-output) adapter for the tiny model, as `framecast train --camera` writes one."""
    from safetensors.torch import save_file

    cfg = load_config("tiny-camera")
    path = tmp_path_factory.mktemp("camera") / "weights.safetensors"
    state = {f"camera.{k}": v.contiguous() for k, v in CameraAdapter.for_config(cfg).state_dict().items()}
    save_file(state, str(path))
    return str(path)


def test_engine_with_an_untrained_adapter_equals_the_frozen_model(zero_adapter):
    from framecast import Engine

    over = ["sampler.steps=2"]
    cam = Engine.from_preset("tiny-camera", over + [f"camera.weights={zero_adapter}"])
    plain = Engine.from_preset("tiny", over)
    a = np.stack(list(cam.stream(PROMPT, frames=9, seed=3, camera="pan-left:2")))
    b = np.stack(list(plain.stream(PROMPT, frames=9, seed=3)))
    assert a.shape == (9, 32, 32, 3) and np.array_equal(a, b)
    # the full schedule too (one pass over all frames)
    c = np.stack(list(Engine.from_preset("tiny-camera", over + [f"camera.weights={zero_adapter}", "schedule.name=full"])
                      .stream(PROMPT, frames=5, seed=3, camera=trajectory("zoom-in:1", 5, 32, 32))))
    assert c.shape == (5, 32, 32, 3)


def test_engine_camera_errors(zero_adapter, tmp_path):
    from framecast import Engine

    with pytest.raises(ValueError, match="no camera adapter"):
        list(Engine.from_preset("tiny", ["sampler.steps=1"]).stream(PROMPT, frames=3, camera="pan-left:1"))
    dual = Engine.from_preset("tiny-camera", [f"camera.weights={zero_adapter}", "schedule.name=dualparal"])
    with pytest.raises(ValueError, match="not schedule.name='dualparal'"):
        list(dual.stream(PROMPT, frames=3, camera="pan-left:1"))
    eng = Engine.from_preset("tiny-camera", [f"camera.weights={zero_adapter}"])
    out = tmp_path / "v.mp4"
    with pytest.raises(CameraError, match="unknown camera move"):
        eng.generate(PROMPT, out=out, frames=3, camera="spin:2")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_camera_errors_are_one_line_and_write_nothing(zero_adapter, tmp_path, capsys):
    from framecast.launch.cli import main

    out = tmp_path / "v.mp4"
    bad = write(tmp_path, frames_json(9, (np.eye(4) * 1.5).tolist(), at=4), "bad.json")
    short = write(tmp_path, frames_json(3), "short.json")
    cases = [(["--camera", "pan-sideways:2"], "unknown camera move"),
             (["--camera", "pan-left:x"], "is not a number"),
             (["--camera-file", str(bad)], "frame 4 c2w"),
             (["--camera-file", str(short)], "3 poses for a video of 9 frames"),
             (["--camera", "pan-left:1", "--preset", "tiny"], "no camera adapter"),
             (["--camera", "pan-left:1", "--schedule", "nfd"], "not schedule.name='nfd'")]
    for extra, message in cases:
        argv = ["generate", PROMPT, "--frames", "9", "--out", str(out), "--quiet", "--preset", "tiny-camera",
                f"camera.weights={zero_adapter}"]
        if "--preset" in extra:  # the later --preset wins
            argv = argv[:argv.index("--preset")] + argv[argv.index("--preset") + 2:-1]
        rc = main(argv + extra)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and len(err.splitlines()) == 1, (extra, err)
        assert not out.exists()
    rc = main(["generate", PROMPT, "--frames", "9", "--out", str(out), "--quiet", "--preset", "tiny-camera",
               f"camera.weights={zero_adapter}", "--camera", "pan-right:1", "sampler.steps=1"])
    assert rc == 0 and out.exists()
