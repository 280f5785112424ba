"""VDT's tasks from the Engine and the CLI (framecast/schedulers/task.py, framecast/engine/condition.py):
the given frames / region leave exactly as given, longer videos go on window after window with the
predict task (streamed, seeded), and bad input is one line before any model work."""
import os
import re

import numpy as np
import pytest
import torch

import framecast.schedulers.task as task_schedule
from framecast import Engine
from framecast.engine.condition import ConditionError, load_condition
from framecast.engine.vae import IdentityVAE
from framecast.engine.video_io import open_video_writer, to_uint8
from framecast.launch.cli import main
from framecast.schedulers.task import task_layout, windows
from tiny_vdt import TEXT_DIM

PROMPT = "a red circle moving right"
# the shapes of tests/tiny_vdt.py's model, in tiny-vdt's 32x32 pixel space, 2 steps
TINY = ["model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=8", "model.ffn_dim=32",
        f"model.text_dim={TEXT_DIM}", "model.freq_dim=16", "model.patch_size=[1,2,2]", "sampler.steps=2",
        "model.weights="]
WINDOW = 8  # tiny-vdt's video.frames


def engine(*overrides) -> Engine:
    """tiny-vdt (schedule.name=task) with a random tiny VDT whose zero-init layers are random too,
    so every path (and the given tokens) carries signal, as tests/tiny_vdt.py does."""
    e = Engine.from_preset("tiny-vdt", [*TINY, *overrides])
    with torch.no_grad():
        torch.manual_seed(0)
        for p in e.model.parameters():
            p.normal_(0, 0.2)
    return e


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def video(e: Engine, **kw) -> np.ndarray:
    return np.stack(list(e.stream(PROMPT, **kw)))


def test_identity_vae_encode_is_the_exact_inverse_of_decode():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    u = np.concatenate([u, u[:, ::-1]])                       # (2, 16, 16, 3), every value
    lat = IdentityVAE.encode(u)
    assert lat.shape == (1, 3, 2, 16, 16) and lat.dtype == torch.float32
    assert np.array_equal(to_uint8(IdentityVAE().decoder().decode(lat)[0]), u)


def test_windows_cover_every_frame_once_and_overlap():
    spans = windows(24, 8, 4)
    assert spans == [range(0, 8), range(8, 12), range(12, 16), range(16, 20), range(20, 24)]
    assert windows(5, 8, 4) == [range(0, 5)]
    assert windows(10, 8, 3) == [range(0, 8), range(8, 10)]
    assert [f for s in windows(101, 8, 2) for f in s] == list(range(101))


@pytest.mark.parametrize("task, n, given, slots", [
    ("predict", 3, [0, 1, 2], [0, 1, 2]),
    ("backward", 2, [6, 7], [6, 7]),
    ("interpolate", 2, [0, 4], [0, 4]),
    ("interpolate", 8, [0, 4], list(range(8))),
    ("animate", 5, [0], [0]),
    ("unconditional", 0, [], []),
])
def test_layout_of_frame_tasks(task, n, given, slots):
    mask, got = task_layout(task, n, 8, 4, 4)
    assert got == slots
    assert [f for f in range(8) if not mask[f].any()] == given
    assert all(mask[f].all() for f in range(8) if f not in given)


@pytest.mark.parametrize("task, n, needle", [
    ("predict", 8, "1 to 7 frames"), ("backward", 0, "1 to 7 frames"), ("interpolate", 3, "2 keyframes"),
    ("random", 7, "all 8 frames"), ("complete", 9, "more than 8 frames"), ("fly", 1, "valid: predict, backward"),
])
def test_layout_refuses_counts_the_task_cannot_take(task, n, needle):
    with pytest.raises(ValueError, match=needle):
        task_layout(task, n, 8, 4, 4)


@pytest.mark.parametrize("task, n, mask", [
    ("predict", 3, None), ("backward", 3, None), ("interpolate", 2, None), ("interpolate", WINDOW, None),
    ("animate", 1, None), ("random", WINDOW, None), ("complete", WINDOW, None), ("complete", WINDOW, "box:8,8,24,24"),
])
def test_every_task_keeps_its_condition_exactly(task, n, mask):
    e = engine()
    cond = frames(n, seed=1)
    out = video(e, frames=12, seed=4, task=task, condition=cond, mask=mask)  # seed 4: random gives 2 frames
    assert out.shape == (12, 32, 32, 3)
    m, slots = e.schedule.layout(e.request(PROMPT, frames=12, seed=4, task=task, condition=cond, mask=mask))
    given = ~m.numpy()                                        # (F, H, W) of the first window
    placed = np.zeros((WINDOW, 32, 32, 3), np.uint8)
    placed[slots] = cond[:len(slots)]
    assert given.any() and (~given).any()
    assert np.array_equal(out[:WINDOW][given], placed[given])  # in pixels, through the identity VAE
    assert not np.array_equal(out[:WINDOW][~given], placed[~given])
    if mask == "box:8,8,24,24":
        assert given[:, :8].all() and not given[:, 8:24, 8:24].any()


def test_predict_chain_streams_window_after_window(monkeypatch):
    """Predict to 3x the window: each window's new frames leave before the next window runs, each
    next window is given the previous one's last `overlap` finished frames, and the stream is the
    windows' new frames in order."""
    runs = []
    real = task_schedule.sample_with_mask

    def spy(denoise, cond, mask, noise, sampler, on_step=None):
        out = real(denoise, cond, mask, noise, sampler, on_step)
        runs.append((cond.clone(), mask.clone(), out.clone()))
        return out
    monkeypatch.setattr(task_schedule, "sample_with_mask", spy)
    e = engine()
    cond = frames(4, seed=2)
    stream = e.stream(PROMPT, frames=3 * WINDOW, seed=5, task="predict", condition=cond)
    first = [next(stream) for _ in range(WINDOW)]
    assert len(runs) == 1                                      # streamed: window 0 left before window 1 ran
    rest = list(stream)
    out = np.stack(first + rest)
    assert out.shape == (3 * WINDOW, 32, 32, 3) and np.array_equal(out[:4], cond)
    overlap = WINDOW // 2
    assert len(runs) == 1 + (2 * WINDOW) // (WINDOW - overlap)
    assert all(c.shape[2] == WINDOW for c, _, _ in runs)       # one window a pass, whatever the length
    for (_, _, prev), (c, m, now) in zip(runs, runs[1:]):
        assert torch.equal(c[:, :, :overlap], prev[:, :, -overlap:])       # given: the previous window's end
        assert torch.equal(now[:, :, :overlap], prev[:, :, -overlap:])     # ... kept exactly
        assert not m[:overlap].any() and m[overlap:].all()
    new = torch.cat([runs[0][2]] + [now[:, :, overlap:] for _, _, now in runs[1:]], dim=2)
    assert np.array_equal(out, to_uint8(new[0].clamp(-1, 1)))


def test_same_seed_same_video_different_seed_different():
    e = engine()
    cond = frames(2)
    a, b, c = (video(e, frames=20, seed=s, task="predict", condition=cond) for s in (7, 7, 8))
    assert np.array_equal(a, b) and not np.array_equal(a[2:], c[2:])
    long_a, long_b = (video(e, frames=20, seed=s) for s in (7, 8))   # the preset's default: unconditional
    assert not np.array_equal(long_a, long_b)


def test_one_unconditional_window_is_the_full_schedule():
    """Window 0's noise is the full schedule's (video_noise(seed)), and unconditional is plain sampling."""
    a = video(engine(), frames=WINDOW, seed=4)
    b = video(engine("schedule.name=full"), frames=WINDOW, seed=4)
    assert np.array_equal(a, b)


def test_api_refusals_before_any_work(tmp_path, monkeypatch):
    import framecast.engine.components as components

    def no_model(*a, **k):
        raise AssertionError("a model was built")
    monkeypatch.setattr(components, "build_model", no_model)
    full = Engine.from_preset("tiny-vdt", [*TINY, "schedule.name=full"])
    with pytest.raises(ValueError, match="task given: VDT's tasks run with schedule.name=task"):
        full.generate(PROMPT, out=tmp_path / "a.mp4", frames=8, task="predict")
    with pytest.raises(ValueError, match="condition given: .*schedule.name=task"):
        full.generate(PROMPT, out=tmp_path / "a.mp4", frames=8, condition=frames(2))
    e = Engine.from_preset("tiny-vdt", TINY)
    with pytest.raises(ConditionError, match="frames must be RGB uint8 .* got float32"):
        e.generate(PROMPT, out=tmp_path / "a.mp4", frames=8, task="predict", condition=frames(2).astype(np.float32))
    with pytest.raises(ConditionError, match="must be video.height x video.width = 32x32"):
        e.generate(PROMPT, out=tmp_path / "a.mp4", frames=8, task="predict", condition=frames(2)[:, :16])
    with pytest.raises(ValueError, match="task='fly' is not a VDT task; valid: predict"):
        e.generate(PROMPT, out=tmp_path / "a.mp4", frames=8, task="fly", condition=frames(2))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("overrides, needle", [
    (["schedule.task.overlap=8"], "schedule.task.overlap=8 must be in 1..7"),
    (["schedule.task.window=1"], "schedule.task.window=1 (latent frames) must be >= 2"),
    (["schedule.task.task=fly"], "schedule.task.task='fly' is not allowed; choose one of: predict, backward"),
    (["model.kind=wan", "model.patch_size=[1,2,2]"], "was not trained with mask modelling"),
])
def test_config_refusals(overrides, needle):
    from framecast.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config("tiny-vdt", overrides)


def test_drawn_animate_frame_is_given():
    e = engine("schedule.task.animate_frame=-1")
    cond = frames(1, seed=6)
    req = e.request(PROMPT, frames=WINDOW, seed=11, task="animate", condition=cond)
    mask, slots = e.schedule.layout(req)
    out = video(e, frames=WINDOW, seed=11, task="animate", condition=cond)
    assert len(slots) == 1 and not mask[slots[0]].any() and np.array_equal(out[slots[0]], cond[0])


def _png_dir(path, video):
    with open_video_writer(f"{path}/", fps=8) as w:
        w.write(video)
    return path


def test_mp4_and_png_dir_conditions_load_the_same_frames(tmp_path):
    y, x = np.mgrid[0:32, 0:32]
    smooth = np.stack([np.stack([x * 6 + f * 8, y * 6, (x + y) * 3 + 20], -1) for f in range(5)]).astype(np.uint8)
    _png_dir(tmp_path / "png", smooth)
    with open_video_writer(tmp_path / "c.mp4", fps=8) as w:
        w.write(smooth)
    png = load_condition(str(tmp_path / "png"), 32, 32, limit=8)
    mp4 = load_condition(tmp_path / "c.mp4", 32, 32, limit=8)
    assert np.array_equal(png, smooth)                         # lossless
    assert mp4.shape == smooth.shape and np.abs(mp4.astype(int) - smooth).mean() < 3  # H.264, yuv420p: close
    assert len(load_condition(tmp_path / "c.mp4", 32, 32, limit=2)) == 3  # reading stops at limit + 1


def test_cli_predict_writes_the_condition_first(tmp_path, capsys):
    cond = frames(3, seed=9)
    _png_dir(tmp_path / "cond", cond)
    out = tmp_path / "out"
    rc = main(["generate", PROMPT, "--preset", "tiny-vdt", "--task", "predict", "--condition", str(tmp_path / "cond"),
               "--frames", "12", "--out", f"{out}/", "--quiet", *TINY])
    assert rc == 0, capsys.readouterr().err
    from framecast.engine.video_io import read_video

    written = read_video(out)
    assert written.shape == (12, 32, 32, 3) and np.array_equal(written[:3], cond)


def _bad_png_dir(path, kind):
    import imageio.v3 as iio

    path.mkdir()
    img = {"grey": frames(1)[0, :, :, 0], "rgba": np.concatenate([frames(1)[0], frames(1)[0, :, :, :1]], -1),
           "small": frames(1)[0, :16]}[kind]
    iio.imwrite(path / "00000.png", img)
    return str(path)


@pytest.mark.parametrize("argv, needle", [
    (["--task", "predict"], "task=predict needs a condition"),
    (["--task", "unconditional", "--condition", "COND"], "condition given, but task=unconditional takes none"),
    (["--condition", "COND"], "condition given, but task=unconditional takes none"),
    (["--task", "predict", "--condition", "COND", "--mask", "box:0,0,8,8"], "mask (--mask) is for --task complete"),
    (["--task", "complete", "--condition", "COND8", "--mask", "box:0,0,99,8"], "must satisfy 0 <= X0 < X1 <= 32"),
    (["--task", "fly", "--condition", "COND"], "schedule.task.task='fly' is not allowed; choose one of: predict"),
    (["--task", "predict", "--condition", "/nonexistent/c.mp4"], "'/nonexistent/c.mp4': does not exist; must be"),
    (["--task", "predict", "--condition", "/nonexistent/frames"], "'/nonexistent/frames': does not exist; must be"),
    (["--task", "predict", "--condition", "AVI"], "must be an .mp4 file, a folder of numbered PNGs"),
    (["--task", "predict", "--condition", "EMPTY"], "no PNG frames in the folder"),
    (["--task", "predict", "--condition", "JUNK"], "cannot read the video"),
    (["--task", "predict", "--condition", "GREY"], "must be RGB uint8 [H, W, 3], got grey"),
    (["--task", "predict", "--condition", "RGBA"], "must be RGB uint8 [H, W, 3], got RGBA"),
    (["--task", "predict", "--condition", "SMALL"], "frames are 16x32 (HxW); must be video.height x video.width"),
    (["--task", "predict", "--condition", "COND8"], "condition has 8 frames; --task predict takes 1 to 7 frames"),
    (["--task", "random", "--condition", "COND"], "condition has 2 frames; --task random takes all 8 frames"),
    (["--task", "predict", "--condition", "COND", "--schedule", "full"], "--task runs schedule.name=task"),
    (["--task", "predict", "schedule.name=full"], "task given: VDT's tasks run with schedule.name=task"),
    (["--task", "predict", "--condition", "COND", "--preset", "tiny"], "was not trained with mask modelling"),
    (["--task", "animate", "--condition", "COND", "vae.kind=sd"], "cannot encode frames here"),
])
def test_bad_task_input_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, argv, needle):
    import framecast.engine.components as components

    def no_model(*a, **k):
        raise AssertionError("a model was built")
    monkeypatch.setattr(components, "build_model", no_model)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _png_dir(inputs / "cond", frames(2))
    _png_dir(inputs / "cond8", frames(8))
    (inputs / "c.avi").write_bytes(b"not a video")
    (inputs / "junk.mp4").write_bytes(b"not a video")
    (inputs / "empty").mkdir()
    names = {"COND": str(inputs / "cond"), "COND8": str(inputs / "cond8"), "GREY": _bad_png_dir(inputs / "g", "grey"),
             "RGBA": _bad_png_dir(inputs / "a", "rgba"), "SMALL": _bad_png_dir(inputs / "s", "small"),
             "AVI": str(inputs / "c.avi"), "EMPTY": str(inputs / "empty"),
             "JUNK": str(inputs / "junk.mp4")}
    argv = [names.get(a, a) for a in argv]
    preset = [] if "--preset" in argv else ["--preset", "tiny-vdt"]
    out = tmp_path / "v.mp4"
    rc = main(["generate", PROMPT, *preset, "--frames", "8", "--out", str(out), "--quiet", *argv, *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.strip().count("\n") == 0, err
    assert sorted(os.listdir(tmp_path)) == ["inputs"]
