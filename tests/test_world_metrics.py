"""The world's metrics: detection, prompt adherence and action following (fixed seeds)."""
import argparse
import json

import numpy as np
import pytest

from framecast.world.captions import ACTIONS
from framecast.world.evaluate import add_eval_arguments, parse_action_spec, run_eval
from framecast.world.metrics import evaluate_video, find_objects, label_components
from framecast.world.scenes import render_prompt_clip, sample_clip, sample_play_clip

PROMPTS = ["a red circle moving right", "a green triangle moving up", "a cyan square moving down",
           "a blue square moving left and a yellow triangle moving down"]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_find_objects_recovers_colour_shape_and_position(shape, size):
    clip = render_prompt_clip(f"a magenta {shape} moving left", 3, seed=1, size=size)
    (det,) = find_objects(clip.frames[2])
    assert det.colour == "magenta" and det.shape_guess == shape
    y, x = clip.objects[0].positions[2]
    r = clip.objects[0].radius
    assert det.bbox == (y - r, x - r, y + r, x + r)
    if shape != "triangle":  # symmetric: the centroid is the centre
        assert det.centroid == (y, x)


def test_label_components_splits_by_colour_and_connectivity():
    cls = np.zeros((1, 5, 6), dtype=np.int8)
    cls[0, 0, :3] = 2            # one run
    cls[0, 1, 2] = 2             # joins it from below
    cls[0, 1, 3] = 3             # touches, other colour: separate
    cls[0, 3, 0] = cls[0, 4, 1] = 2  # diagonal only: two components
    lab = label_components(cls)
    assert len(np.unique(lab[lab >= 0])) == 4 and (lab == -1).sum() == 30 - 7
    assert lab[0, 1, 2] == lab[0, 0, 0] == 0


@pytest.mark.parametrize("prompt", PROMPTS)
def test_perfect_clips_score_high(prompt):
    for seed in range(3):
        m = evaluate_video(render_prompt_clip(prompt, 40, seed).frames, prompt)
        assert m["adherence"] > 0.9 and m["presence"] == 1.0 and m["count_stability"] == 1.0
        if " and " not in prompt:  # crossing shapes hide parts of each other and shift centroids
            assert m["max_jump"] == pytest.approx(1.0)
        json.dumps(m, allow_nan=False)
        assert all(type(v) is float for v in m.values())
    one = evaluate_video(render_prompt_clip(prompt, 40, 0).frames, prompt)
    if " and " not in prompt:  # nothing crosses it: exact
        assert one["adherence"] == 1.0 and one[f"{prompt.split()[1]}.bounce_consistency"] == 1.0


def test_noise_and_other_prompts_score_low():
    prompt = "a red circle moving right"
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    assert evaluate_video(noise, prompt)["adherence"] < 0.2
    other = render_prompt_clip("a blue square moving left", 32, 0).frames
    assert evaluate_video(other, prompt)["adherence"] < 0.1
    for seed in range(5):  # right colour and shape, wrong direction: direction fails
        wrong = evaluate_video(render_prompt_clip("a red circle moving left", 32, seed).frames, prompt)
        assert wrong["prompt.red.direction"] < 0.1 and wrong["adherence"] < 0.7
        wrong = evaluate_video(render_prompt_clip("a red triangle moving right", 32, seed).frames, prompt)
        assert wrong["prompt.red.shape"] < 0.1 and wrong["adherence"] < 0.7


def test_flicker_halves_presence():
    frames = render_prompt_clip("a red circle moving right", 32, 0).frames.copy()
    frames[1::2] = 0
    m = evaluate_video(frames, "a red circle moving right")
    assert m["red.presence"] == pytest.approx(0.5) and m["presence"] == pytest.approx(0.5)
    assert m["colour_identity"] == 0.0 and m["adherence"] < 0.5


def test_mid_air_turns_break_bounce_consistency():
    clip = render_prompt_clip("a yellow square moving right", 30, 0)
    frames = np.concatenate([clip.frames[:5], clip.frames[:5][::-1]] * 3)  # back and forth away from walls
    assert evaluate_video(frames)["yellow.bounce_consistency"] < 0.8


def test_shapes_that_stop_or_vanish_at_a_wall_do_not_return():
    for seed in range(6):
        clip = render_prompt_clip("a red square moving right", 64, seed)
        m = evaluate_video(clip.frames, "a red square moving right")
        assert m["red.wall_arrivals"] >= 2 and m["wall_return"] == 1.0  # the world always bounces
        x = clip.objects[0].positions[:, 1]
        hit = int(np.argmax(x == x.max()))  # first frame at the right wall
        stuck = np.concatenate([clip.frames[:hit + 1]] + [clip.frames[hit:hit + 1]] * 8)
        assert evaluate_video(stuck, "a red square moving right")["wall_return"] == 0.0
        gone = clip.frames[:hit + 9].copy()
        gone[hit + 1:] = 0  # fades at the wall
        assert evaluate_video(gone, "a red square moving right")["wall_return"] == 0.0
    assert "wall_return" not in evaluate_video(render_prompt_clip("a red square moving right", 6, 0).frames)


def test_play_clips_follow_actions_and_shuffled_do_not():
    follow, shuffled = [], []
    for seed in range(8):
        clip = sample_play_clip(seed, 48)
        m = evaluate_video(clip.frames, actions=clip.actions)
        assert m["player.presence"] == 1.0 and m["player.duplicates"] == 0.0
        follow.append(m["action_follow"])
        acts = list(clip.actions)
        np.random.default_rng(seed).shuffle(acts)
        shuffled.append(evaluate_video(clip.frames, actions=acts)["action_follow"])
    assert min(follow) >= 0.95 and max(shuffled) < 0.6


def test_play_duplicates_and_bad_actions():
    clip = sample_play_clip(0, 10)
    frames = clip.frames.copy()
    frames[:, :4, -4:] = 255  # a second white square in a corner
    frames[:, 4:8, -8:] = 0
    m = evaluate_video(frames, actions=clip.actions)
    assert m["player.duplicates"] > 0.5
    with pytest.raises(ValueError, match="one action per frame"):
        evaluate_video(clip.frames, actions=clip.actions[:-1])
    with pytest.raises(ValueError, match="'jump'.*none, up, down, left, right"):
        evaluate_video(clip.frames, actions=["jump"] * 10)


def test_parse_action_spec(tmp_path):
    assert parse_action_spec("right*3,up*2") == ["right"] * 3 + ["up"] * 2
    assert parse_action_spec("none, LEFT * 2 ,down") == ["none", "left", "left", "down"]
    f = tmp_path / "acts.txt"
    f.write_text("none\n# a comment\nright\n\nup  # jump next\n")
    assert parse_action_spec(str(f)) == ["none", "right", "up"]
    with pytest.raises(ValueError) as e:
        parse_action_spec("right*2,jump*3,fly")
    assert "'jump'" in str(e.value) and "'fly'" in str(e.value) and ", ".join(ACTIONS) in str(e.value)
    with pytest.raises(ValueError, match="repeat count"):
        parse_action_spec("right*0")
    with pytest.raises(ValueError, match="repeat count"):
        parse_action_spec("right*two")
    f.write_text("up\nsideways\n")
    with pytest.raises(ValueError, match="'sideways'"):
        parse_action_spec(str(f))


def test_run_eval_on_png_folder(tmp_path, capsys):
    import imageio.v3 as iio

    clip = sample_play_clip(3, 16)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(clip.frames):
        iio.imwrite(folder / f"{i:05d}.png", frame)
    spec = tmp_path / "actions.txt"
    spec.write_text("\n".join(clip.actions))
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    out = tmp_path / "m.json"
    args = parser.parse_args([str(folder), "--actions", str(spec), "--json", str(out)])
    assert run_eval(args) == 0
    m = json.loads(out.read_text())
    assert m["action_follow"] == 1.0 and "action_follow" in capsys.readouterr().out

    text = sample_clip(4, 16)
    for i, frame in enumerate(text.frames):
        iio.imwrite(folder / f"{i:05d}.png", frame)
    args = parser.parse_args([str(folder), "--prompt", text.caption])
    assert run_eval(args) == 0
    assert "adherence" in capsys.readouterr().out
