"""The world through a moving camera (framecast/world/camera_scenes.py) and the camera-following
metric (framecast/world/camera_metrics.py): exact pans at any length, zooms from the centre,
determinism, the training batches' rays, and the metric exact on world clips, low on wrong ones."""
import numpy as np
import pytest
import torch

from framecast.models.camera_poses import trajectory
from framecast.world.camera_metrics import camera_follow, expected_flow
from framecast.world.camera_scenes import (StillObject, camera_batches, draw_plane, image_points, parse_still_prompt,
                                           plane_period, prompt_camera_clip, render_camera_clip, sample_camera_clip)
from framecast.world.captions import tokenize
from framecast.world.metrics import detect_video

OBJECTS = [StillObject("red", "circle", (8, 10)), StillObject("blue", "square", (22, 20))]


def test_first_frame_shows_the_plane_one_to_one_and_pans_shift_it_exactly():
    tile = draw_plane(OBJECTS)
    assert tile.shape == (48, 48, 3) and plane_period(64) == 96
    cols, rows = np.arange(32), np.arange(32)
    for move, shift in (("pan-left:2", (0, 2)), ("pan-right:3", (0, -3)), ("pan-up:1", (1, 0)),
                        ("pan-down:2", (-2, 0)), ("still", (0, 0))):
        video = render_camera_clip(OBJECTS, trajectory(move, 40, 32, 32))
        assert np.array_equal(video[0], tile[:32, :32])
        for f in (1, 7, 39):  # the scene drifts against the camera, exactly, however long
            expect = tile[np.ix_((rows - shift[0] * f) % 48, (cols - shift[1] * f) % 48)]
            assert np.array_equal(video[f], expect), (move, f)


def test_half_pixel_pans_move_whole_pixels_every_other_frame():
    tile = draw_plane(OBJECTS)
    video = render_camera_clip(OBJECTS, trajectory("pan-left:0.5", 9, 32, 32))
    for f in range(0, 9, 2):  # at even frames the shift is a whole f / 2 px
        assert np.array_equal(video[f], tile[:32, (np.arange(32) - f // 2) % 48])
    red = [d.centroid[1] for dets in detect_video(video) for d in dets if d.colour == "red"]
    assert sorted(np.diff(red)) == [0.0] * 4 + [1.0] * 4   # nearest sampling: 0 or 1 px a frame


def test_zoom_moves_the_edge_by_the_speed_and_keeps_the_centre():
    poses = trajectory("zoom-in:1.5", 3, 32, 32)
    edge = np.array([[16.0, 32.0], [16.0, 16.0]])  # (y, x): the right edge's midpoint, and the centre
    flow = expected_flow(poses, 0, edge, 32, 32)
    np.testing.assert_allclose(flow, [[0, 1.5], [0, 0]], atol=1e-9)
    out = trajectory("zoom-out:1", 2, 32, 32)
    np.testing.assert_allclose(expected_flow(out, 0, edge[:1], 32, 32), [[0, -1.0]], atol=1e-9)
    video = render_camera_clip([StillObject("green", "square", (16, 16))], trajectory("zoom-in:2", 6, 32, 32))
    areas = [d.area for dets in detect_video(video) for d in dets]
    assert areas == sorted(areas) and areas[-1] > 2 * areas[0]


def test_clips_are_deterministic_and_captioned_in_the_vocabulary():
    a, b = sample_camera_clip(7, 8, max_offset=20), sample_camera_clip(7, 8, max_offset=20)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption and a.move == b.move
    assert a.caption.endswith("still") and len(tokenize(a.caption)) == 16
    assert parse_still_prompt(a.caption) == [(o.colour, o.shape) for o in a.objects]
    for seed in range(20):  # every shape is in view of the clip's first frame (zoomed out: may be too small to find)
        clip = sample_camera_clip(seed, 4, max_offset=30)
        if clip.poses.K_F33[0, 0, 0] < 32:
            continue
        found = {d.colour for d in detect_video(clip.frames[:1])[0]}
        assert {o.colour for o in clip.objects} <= found, seed
    with pytest.raises(ValueError, match="COLOUR SHAPE still"):
        parse_still_prompt("a red circle moving left")


def test_batches_carry_rays_relative_to_the_trajectory_start():
    batch = next(camera_batches(3, 4, 6, max_offset=30))
    assert batch["video"].shape == (4, 3, 6, 32, 32) and batch["camera"].shape == (4, 6, 6, 32, 32)
    assert batch["tokens"].shape == (4, 16)
    clip = sample_camera_clip(0, 6, move="pan-right:2", max_offset=30)
    from framecast.world.camera_scenes import clip_rays

    rays = clip_rays(clip, 32)
    assert clip.offset > 0 and rays[:3, 0].abs().max() > 0   # a later window: its first frame is not at the origin


@pytest.mark.parametrize("move", ["pan-left:2", "pan-right:1", "pan-up:1", "pan-down:3", "still"])
def test_metric_is_exact_on_world_clips(move):
    scores = []
    for seed in range(4):
        clip = prompt_camera_clip("a red circle still and a blue square still", move, 12, seed)
        scores.append(camera_follow(clip.frames, clip.poses, objects=2))
    assert sum(s["steps"] for s in scores) > 20
    assert all(s.get("speed_err", 0) < 1e-9 and s.get("epe", 0) < 1e-9 for s in scores)
    if move != "still":
        assert all(s["direction"] == 1.0 for s in scores if "direction" in s)


def test_metric_on_zooms_is_radial():
    clip = render_camera_clip([StillObject("red", "square", (8, 8)), StillObject("cyan", "circle", (24, 24))],
                              trajectory("zoom-in:1", 8, 32, 32))
    s = camera_follow(clip, trajectory("zoom-in:1", 8, 32, 32), objects=2)
    assert s["steps"] >= 8 and s["direction"] >= 0.8 and s["epe"] < 0.6


@pytest.mark.parametrize("shown,scored", [("pan-left:2", "pan-right:2"), ("pan-up:2", "pan-left:2"),
                                          ("still", "pan-down:2")])
def test_metric_scores_a_wrong_camera_low(shown, scored):
    clip = prompt_camera_clip("a green triangle still and a yellow square still", shown, 10, 1)
    s = camera_follow(clip.frames, trajectory(scored, 10, 32, 32), objects=2)
    assert s["steps"] > 5 and s["direction"] == 0.0 and s["speed_err"] + s["epe"] >= 2.0


def test_image_points_invert_plane_points():
    poses = trajectory("zoom-in:1", 4, 32, 32)
    pts = np.array([[3.5, 4.5], [30.0, 12.25]])
    from framecast.world.camera_scenes import plane_points

    plane = plane_points(poses.K_F33[3], poses.c2w_F44[3], pts, 32, 32)
    np.testing.assert_allclose(image_points(poses.K_F33[3], poses.c2w_F44[3], plane, 32, 32), pts, atol=1e-9)


def test_rollout_and_full_name_the_frames_of_each_pass():
    from framecast.schedulers.flow import make_sampler
    from framecast.schedulers.full import denoise_full
    from framecast.schedulers.rollout import rollout

    seen = []

    def denoise(lat, t, step=None, block=0, frames=None):
        assert len(frames) == lat.shape[2]
        seen.append(frames)
        return torch.zeros_like(lat)

    def sampler():
        s = make_sampler("euler", shift=3.0)
        s.set_timesteps(1)
        return s

    list(rollout(denoise, torch.zeros(1, 3, 8, 4, 4), sampler, 3, 2, lead_frames=1))
    assert seen == [range(0, 1), range(0, 4), range(2, 7), range(5, 8)]
    seen.clear()
    denoise_full(denoise, torch.zeros(1, 3, 5, 4, 4), sampler, lead_frames=2)
    assert seen == [range(0, 5), range(0, 5)]


def test_camera_loss_reaches_only_the_adapter():
    from framecast.config import load_config
    from framecast.engine.components import new_model
    from framecast.engine.text import BuiltinTextEncoder
    from framecast.models.camera import CameraModel
    from framecast.world.camera_training import camera_loss, new_adapter
    from framecast.world.train import TrainOptions

    cfg = load_config("tiny-camera", ["model.weights=", "model.num_layers=1"])
    base, text = new_model(cfg).requires_grad_(False), BuiltinTextEncoder(64, 16).requires_grad_(False)
    nets = new_adapter(cfg, 0)
    model = CameraModel(base, nets["camera"])
    batch = next(camera_batches(0, 2, 3, moves=("pan-left",)))
    empty = torch.tensor([tokenize("")])
    plain = camera_loss(model, text, batch, torch.Generator().manual_seed(0), TrainOptions(), empty, "cpu")
    weighted = camera_loss(model, text, batch, torch.Generator().manual_seed(0), TrainOptions(fg_weight=4.0), empty,
                           "cpu")
    assert plain.item() != weighted.item()
    weighted.backward()
    assert nets["camera"].conv.weight.grad.abs().sum() > 0
    assert cfg.camera.lora_rank > 0 and all(nets["camera"].lora[0][n].up.weight.grad.abs().sum() > 0 for n in "qkvo")
    assert all(p.grad is None for p in base.parameters())
