"""The windowed motion measures (framecast/world/motion.py): a still, jittering, jumping, sideways
or mid-air-turning object cannot pass for one that moves like the world."""
import numpy as np
import pytest

from framecast.world.metrics import evaluate_video
from framecast.world.motion import windows
from framecast.world.scenes import render_prompt_clip

PROMPT = "a red circle moving right"


@pytest.mark.parametrize("prompt", [PROMPT, "a blue square moving down",
                                    "a yellow circle moving up and a cyan square moving left"])
@pytest.mark.parametrize("size", [32, 64])
def test_world_clips_move_the_named_way_through_their_bounces(prompt, size):
    for seed in range(2):
        m = evaluate_video(render_prompt_clip(prompt, 160, seed, size=size).frames, prompt)
        assert m["moving"] == 1.0 and m["jumps"] == 0.0
        assert m["moving_direction"] > (0.9 if " and " in prompt else 0.99)  # crossing shapes shift centroids


def test_a_still_object_never_moves():
    frames = np.repeat(render_prompt_clip(PROMPT, 1, 0).frames, 64, axis=0)
    m = evaluate_video(frames, PROMPT)
    assert m["moving"] == 0.0 and "moving_direction" not in m and m["jumps"] == 0.0


def test_jitter_in_place_is_not_motion():
    clip = render_prompt_clip(PROMPT, 3, 0).frames
    frames = np.stack([clip[1 + (-1) ** t] for t in range(64)])  # one px left and right, again and again
    assert evaluate_video(frames, PROMPT)["moving"] == 0.0


def test_moving_part_of_the_time_counts_windows():
    clip = render_prompt_clip(PROMPT, 32, 1).frames
    frames = np.concatenate([clip, np.repeat(clip[-1:], 32, axis=0)])  # 2 windows moving, 2 still
    m = evaluate_video(frames, PROMPT)
    assert m["moving"] == 0.5 and m["moving_direction"] > 0.9


def test_sideways_motion_moves_but_the_wrong_way():
    frames = render_prompt_clip("a red circle moving down", 64, 0).frames
    m = evaluate_video(frames, PROMPT)
    assert m["moving"] == 1.0 and m["moving_direction"] < 0.05


def test_mid_air_turns_and_jumps_are_caught():
    clip = render_prompt_clip(PROMPT, 64, 2).frames
    back_and_forth = np.concatenate([clip[:8], clip[:8][::-1]] * 4)  # turns in mid-air every 8 frames
    m = evaluate_video(back_and_forth, PROMPT)
    assert m["moving"] == 1.0 and 0.3 < m["moving_direction"] < 0.7
    jumpy = clip.copy()
    jumpy[::8] = np.roll(jumpy[::8], 10, axis=2)  # every 8th frame 10 px to the right
    assert evaluate_video(jumpy, PROMPT)["jumps"] == pytest.approx(15 / 63)  # frame 0: one step, the others two


def test_windows_cover_the_video_and_skip_a_stub():
    assert windows(40) == [range(0, 16), range(16, 32), range(32, 40)]
    assert windows(36) == [range(0, 16), range(16, 32)]  # 4 frames: no span of SPAN frames inside
    assert windows(3) == []


def test_seam_jumps_find_a_jump_at_a_seam_and_only_there():
    clip = render_prompt_clip(PROMPT, 48, 2).frames
    frames = np.concatenate([clip[:24], clip[32:]])  # the object skips 8 frames at frame 24
    m = evaluate_video(frames, PROMPT, seams=[8, 16, 24, 32])
    assert m["seam_jump"] > 6 and m["inner_jump"] <= 1.5
    m = evaluate_video(frames, PROMPT, seams=[8, 16, 32])  # the skip is now inside a block
    assert m["seam_jump"] <= 1.5 and m["inner_jump"] > 6
    assert "seam_jump" not in evaluate_video(frames, PROMPT)


@pytest.mark.parametrize("overrides, expected", [
    (["schedule.name=full"], ()),
    (["schedule.name=rollout", "schedule.rollout.chunk_frames=6", "schedule.rollout.lead_frames=1"],
     (1, 7, 13, 19)),
    (["schedule.name=dualparal", "schedule.dualparal.block_frames=8"], (8, 16)),
    (["schedule.name=vin", "schedule.vin.chunk_frames=6", "schedule.vin.overlap_frames=2"], (6, 12, 18)),
])
def test_every_schedule_names_its_seams(overrides, expected):
    from framecast import Engine

    with Engine.from_preset("tiny", ["model.weights=", *overrides]) as engine:
        assert engine.schedule.seams(engine.request(PROMPT, frames=21)) == expected
