"""The built-in world: determinism, geometry, captions and the play clips (fixed seeds)."""
import numpy as np
import pytest
import torch

from framecast.world.captions import ACTIONS, COLOURS, SHAPES, VOCABULARY, ObjectSpec, UnknownWordsError, \
    caption, parse_prompt, tokenize
from framecast.world.scenes import COLOUR_RGB, DIRECTION_VECTORS, PLAYER_RGB, bounce_period, place_track, \
    render_prompt_clip, sample_clip, sample_play_clip, shape_mask, world_batches


def _colours_in(frame):
    rgb = {tuple(int(v) for v in p) for p in frame.reshape(-1, 3)} - {(0, 0, 0)}
    names = {v: k for k, v in COLOUR_RGB.items()} | {PLAYER_RGB: "white"}
    return {names[p] for p in rgb}  # KeyError if anything off-palette was drawn


def test_same_seed_same_clip_different_seed_different_clip():
    a, b, c = sample_clip(7, 12), sample_clip(7, 12), sample_clip(8, 12)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
    assert not np.array_equal(a.frames, c.frames)
    p, q, r = sample_play_clip(7, 12), sample_play_clip(7, 12), sample_play_clip(8, 12)
    assert np.array_equal(p.frames, q.frames) and p.actions == q.actions
    assert not np.array_equal(p.frames, r.frames)
    # a Generator is consumed, so consecutive draws differ but replay identically
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    assert [sample_clip(g1, 4).caption for _ in range(5)] == [sample_clip(g2, 4).caption for _ in range(5)]


@pytest.mark.parametrize("play", [False, True])
def test_world_batches_deterministic_and_shaped(play):
    it1, it2 = world_batches(5, batch=3, frames=6, play=play), world_batches(5, batch=3, frames=6, play=play)
    for _ in range(2):
        b1, b2 = next(it1), next(it2)
        assert b1.keys() == b2.keys() and all(torch.equal(b1[k], b2[k]) for k in b1)
    video = b1["video"]
    assert video.shape == (3, 3, 6, 32, 32) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and set(video.unique().tolist()) <= {-1.0, 1.0}
    assert b1["offsets"].shape == (3,) and (b1["offsets"] == 0).all()  # offset_prob 0: every clip from frame 0
    if play:
        assert set(b1) == {"video", "offsets", "actions"}
        assert b1["actions"].shape == (3, 6) and b1["actions"].dtype == torch.int64
        assert b1["actions"].max() < len(ACTIONS) and (b1["actions"][:, 0] == 0).all()
    else:
        assert set(b1) == {"video", "offsets", "tokens"}
        assert b1["tokens"].shape == (3, 16) and b1["tokens"].dtype == torch.int64
    other = next(world_batches(6, batch=3, frames=6, play=play))
    assert not torch.equal(other["video"], next(world_batches(5, batch=3, frames=6, play=play))["video"])


def test_offset_clips_are_later_windows_of_the_same_video():
    for seed in range(10):
        whole, late = sample_clip(seed, 30), sample_clip(seed, 12, offset=18)
        assert np.array_equal(late.frames, whole.frames[18:]) and late.caption == whole.caption
        for a, b in zip(late.objects, whole.objects):
            assert np.array_equal(a.positions, b.positions[18:]) and np.array_equal(a.velocities, b.velocities[18:])
        play, play_late = sample_play_clip(seed, 6), sample_play_clip(seed, 6, offset=18)
        assert play.actions == play_late.actions and np.array_equal(play.player, play_late.player)
        for a, b in zip(play.objects, play_late.objects):  # the shapes are 18 frames further along
            assert np.array_equal(b.positions[0], place_track(ObjectSpec(a.colour, a.shape, a.direction),
                                                              tuple(a.positions[0]), 19).positions[18])
    with pytest.raises(ValueError, match="offset must be an integer >= 0"):
        sample_clip(0, 4, offset=-1)


def test_world_batches_offsets_cover_every_phase_of_the_bounce():
    period = bounce_period(32)
    assert period == 2 * (28 - 3)  # centres 3..28 at 32x32: there and back
    batches = world_batches(0, batch=16, frames=4, offset_prob=0.5)
    offsets = torch.cat([next(batches)["offsets"] for _ in range(100)])
    assert 0.4 < (offsets > 0).float().mean() < 0.6
    assert set(offsets[offsets > 0].tolist()) == set(range(1, period))
    late = next(world_batches(0, batch=64, frames=4, offset_prob=1.0))["video"]
    at_wall = (late[:, :, :, :, :3] > -1).any() or (late[:, :, :, :, -3:] > -1).any()
    assert (late.flatten(1) > -1).any(1).all() and at_wall
    with pytest.raises(ValueError, match="offset_prob"):
        next(world_batches(0, batch=2, frames=4, offset_prob=1.5))


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_stay_in_bounds_move_straight_and_bounce(size):
    bounces = 0
    for seed in range(40):
        clip = sample_clip(seed, 60, size=size)
        assert clip.frames.shape == (60, size, size, 3) and clip.frames.dtype == np.uint8
        for obj in clip.objects:
            r, pos, vel = obj.radius, obj.positions, obj.velocities
            assert r == 3 * size // 32
            assert (pos >= r).all() and (pos <= size - 1 - r).all()
            speed = size // 32
            assert (np.abs(vel).sum(1) == speed).all()  # constant speed, axis-aligned
            assert np.array_equal(pos[1:], pos[:-1] + vel[:-1])
            assert np.array_equal(vel[0], np.array(DIRECTION_VECTORS[obj.direction]) * speed)
            for f in range(1, 60):
                flipped = vel[f] != vel[f - 1]
                if flipped.any():  # a reflection: the component reverses, only at a wall
                    bounces += 1
                    assert np.array_equal(vel[f][flipped], -vel[f - 1][flipped])
                    axis = int(np.flatnonzero(flipped)[0])
                    at_wall = pos[f, axis] - r if vel[f - 1][axis] < 0 else size - 1 - r - pos[f, axis]
                    assert 0 <= at_wall < speed
            # the caption is visibly true before the first bounce
            assert np.array_equal(vel[:4], np.repeat(vel[:1], 4, axis=0))
    assert bounces > 20


def test_colours_distinct_caption_matches_objects_and_pixels():
    counts = set()
    for seed in range(40):
        clip = sample_clip(seed, 5)
        colours = [o.colour for o in clip.objects]
        counts.add(len(colours))
        assert len(set(colours)) == len(colours) and set(colours) <= set(COLOURS)
        specs = [ObjectSpec(o.colour, o.shape, o.direction) for o in clip.objects]
        assert clip.caption == caption(specs) and parse_prompt(clip.caption) == specs
        assert _colours_in(clip.frames[0]) <= set(colours)
        if len(colours) == 1:  # nothing to hide it: exactly the shape's footprint
            o = clip.objects[0]
            assert (clip.frames[0].any(-1)).sum() == shape_mask(o.shape, o.radius).sum()
    assert counts == {1, 2}


def test_render_prompt_clip_satisfies_the_prompt():
    clip = render_prompt_clip("A green triangle moving up, and a magenta square moving left.", 10, seed=0)
    assert clip.caption == "a green triangle moving up and a magenta square moving left"
    assert [(o.colour, o.shape, o.direction) for o in clip.objects] == \
        [("green", "triangle", "up"), ("magenta", "square", "left")]
    assert (np.diff(clip.objects[0].positions[:5, 0]) < 0).all()
    assert (np.diff(clip.objects[1].positions[:5, 1]) < 0).all()
    assert _colours_in(clip.frames[3]) == {"green", "magenta"}


@pytest.mark.parametrize("size", [32, 64])
def test_starts_come_from_the_lattice_and_cover_it(size):
    from framecast.world.scenes import place_track, start_lattice

    rows, cols = start_lattice("right", size)
    s = size // 32
    assert (rows.start, rows.stop - 1, rows.step) == (3 * s, 28 * s, s)   # any row inside the walls
    assert (cols.start, cols.stop - 1) == (3 * s, 28 * s - 4 * s)           # MIN_RUN steps from the right wall
    assert start_lattice("up", size)[0].start == 3 * s + 4 * s
    seen = set()
    for seed in range(2000):
        obj = render_prompt_clip("a red circle moving right", 3, seed=seed, size=size).objects[0]
        y, x = obj.positions[0]
        assert y in rows and x in cols
        seen.add((y, x))
        placed = place_track(ObjectSpec("red", "circle", "right"), (y, x), 3, size)
        assert np.array_equal(placed.positions, obj.positions)
    assert len(seen) > 0.9 * len(rows) * len(cols)

def test_shape_footprints():
    for r in (3, 6):
        fills = {s: shape_mask(s, r).mean() for s in SHAPES}
        assert fills["square"] == 1.0 and 0.72 < fills["circle"] < 0.84 and 0.45 < fills["triangle"] < 0.56


def test_tokenize_round_trip_and_padding():
    prompt = "a red circle moving right and a blue square moving down"
    ids = tokenize(prompt)
    assert len(ids) == 16 and VOCABULARY[:2] == ("<pad>", "</s>")
    n = ids.index(1)
    assert " ".join(VOCABULARY[i] for i in ids[:n]) == prompt and ids[n + 1:] == [0] * (15 - n)
    assert tokenize("A Red circle, moving RIGHT.") == tokenize("a red circle moving right")
    assert parse_prompt(prompt) == [ObjectSpec("red", "circle", "right"), ObjectSpec("blue", "square", "down")]
    with pytest.raises(ValueError, match="at most"):
        tokenize(prompt, max_len=8)


def test_unknown_words_are_named():
    with pytest.raises(UnknownWordsError) as e:
        tokenize("a purple hexagon moving right")
    msg = str(e.value)
    assert "'purple'" in msg and "'hexagon'" in msg and "circle" in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(UnknownWordsError, match="'sideways'"):
        parse_prompt("a red circle moving sideways")


@pytest.mark.parametrize("prompt, match", [
    ("red red circle", "cannot parse"),
    ("a red circle moving", "cannot parse"),
    ("a circle red moving right", "cannot parse"),
    ("", "cannot parse"),
    ("a red circle moving right and a red square moving left", "twice"),
    ("a red circle moving right and a blue square moving left and a cyan triangle moving up", "at most 2"),
])
def test_ungrammatical_prompts_raise(prompt, match):
    with pytest.raises(ValueError, match=match):
        parse_prompt(prompt)


@pytest.mark.parametrize("size", [32, 64])
def test_play_player_moves_per_action_and_stops_at_walls(size):
    step, side = 2 * size // 32, 4 * size // 32
    hits = 0
    for seed in range(20):
        clip = sample_play_clip(seed, 40, size=size)
        assert clip.actions[0] == "none" and len(clip.actions) == 40 and clip.player_side == side
        p = clip.player
        assert (p >= 0).all() and (p <= size - side).all()
        for f in range(1, 40):
            want = p[f - 1] + np.array({"none": (0, 0), **DIRECTION_VECTORS}[clip.actions[f]]) * step
            clamped = np.clip(want, 0, size - side)
            hits += not np.array_equal(want, clamped)
            assert np.array_equal(p[f], clamped)
        for f in (0, 20, 39):  # the player is drawn on top, as a white square
            y, x = p[f]
            assert (clip.frames[f, y:y + side, x:x + side] == 255).all()
            assert (clip.frames[f].min(-1) == 255).sum() == side * side
        assert "white" not in {o.colour for o in clip.objects}
    assert hits > 0  # the walls were reached and stopped the player


def test_play_actions_repeat():
    acts = sum((sample_play_clip(s, 100).actions for s in range(5)), [])
    repeats = np.mean([a == b for a, b in zip(acts[2:], acts[1:])])
    assert 0.75 < repeats < 0.95  # 0.8 keep + 0.2 × 1/5 redraw the same
    never = sample_play_clip(0, 100, repeat_prob=0.0).actions
    assert np.mean([a == b for a, b in zip(never[2:], never[1:])]) < 0.4


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 32"):
        sample_clip(0, 4, size=48)
    with pytest.raises(ValueError, match="frames"):
        sample_clip(0, 0)
    with pytest.raises(ValueError, match="repeat_prob"):
        sample_play_clip(0, 4, repeat_prob=1.5)
