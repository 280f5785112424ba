import pytest

from framecast.config import ConfigError, load_config, presets


def test_presets_ship():
    assert {"tiny", "wan2.1-t2v-1.3b"} <= set(presets())


def test_wan_preset_matches_the_real_model():
    cfg = load_config("wan2.1-t2v-1.3b")
    m = cfg.model
    assert (m.num_attention_heads, m.attention_head_dim, m.ffn_dim, m.num_layers, m.text_dim) == (12, 128, 8960, 30, 4096)
    assert (cfg.sampler.name, cfg.sampler.steps, cfg.sampler.shift, cfg.sampler.guidance_scale) == ("unipc", 50, 3.0, 5.0)
    assert (cfg.video.height, cfg.video.width, cfg.video.frames, cfg.video.fps) == (480, 832, 81, 16)


def test_overrides_apply_in_order():
    cfg = load_config("tiny", ["sampler.steps=20", "video.fps=12", "sampler.steps=7", "model.patch_size=[1,2,2]"])
    assert cfg.sampler.steps == 7 and cfg.video.fps == 12 and cfg.model.patch_size == [1, 2, 2]
    assert cfg.preset == "tiny"


@pytest.mark.parametrize("override, needle", [
    ("sampler.stepz=3", "unknown key 'sampler.stepz'; allowed keys in sampler: name, steps"),
    ("bogus=1", "unknown key 'bogus'"),
    ("sampler.steps=abc", "bad value for 'sampler.steps'"),
    ("sampler.steps=0", "sampler.steps=0 is out of range; must be >= 1"),
    ("sampler.name=ddpm", "choose one of: unipc, euler, euler-wan, ddim"),
    ("schedule.name=fifo", "choose one of: full, rollout, dualparal, nfd"),
    ("parallel.launcher=mpi", "choose one of: local, torchrun, ray"),
    ("schedule.dualparal.context_frames=9", "must be <= schedule.dualparal.block_frames"),
    ("parallel.layer_split=[1,2]", "parallel.layer_split"),
    ("device=tpu", "device='tpu'"),
    ("sampler.steps", "not of the form key=value"),
    ("[=nan", "'[' is not a config key"),            # OmegaConf's key parser raised IndexError on it
    ("sampler..steps=3", "'sampler..steps' is not a config key"),
])
def test_bad_overrides_fail_with_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; available: latte-1, tiny"):
        load_config("nope")


def test_empty_override_is_the_empty_string():
    assert load_config("tiny", ["model.weights="]).model.weights == ""
    assert load_config("tiny", ['model.weights=""']).model.weights == ""


@pytest.mark.parametrize("override, new", [
    ("schedule.block_frames=4", "schedule.dualparal.block_frames"),
    ("schedule.context_frames=2", "schedule.dualparal.context_frames"),
    ("schedule.chunk_frames=2", "schedule.rollout.chunk_frames"),
    ("schedule.chunk_context=2", "schedule.rollout.chunk_context"),
    ("schedule.lead_frames=1", "schedule.full.lead_frames or schedule.rollout.lead_frames"),
    ("schedule.window=3", "schedule.nfd.window"),
    ("schedule.speculate=2", "schedule.nfd.speculate"),
    ("schedule.fuse_commit=false", "schedule.nfd.fuse_commit"),
])
def test_flat_schedule_keys_of_earlier_versions_name_their_new_key(override, new):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert f"it moved to {new}" in str(e.value) and "\n" not in str(e.value)


def test_every_schedule_has_its_own_section_with_its_own_checks():
    from framecast.schedulers.registry import SCHEDULES

    cfg = load_config("tiny", ["schedule.rollout.chunk_frames=3", "schedule.nfd.window=5"])
    assert set(SCHEDULES) <= {f for f in vars(cfg.schedule) if f != "name"}
    assert (cfg.schedule.rollout.chunk_frames, cfg.schedule.nfd.window, cfg.schedule.dualparal.block_frames) == (3, 5, 8)
    for override, needle in (("schedule.nfd.draft_mode=both", "schedule.nfd.draft_mode='both' is not allowed"),
                             ("schedule.nfd.context_sigma=1.0", "schedule.nfd.context_sigma=1.0 is out of range"),
                             ("schedule.full.lead_frames=-1", "schedule.full.lead_frames=-1 is out of range")):
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
            load_config("tiny", [override])
    # checks against the whole config run for the selected schedule only
    with pytest.raises(ConfigError, match="schedule.name=nfd generates one video frame at a time"):
        load_config("tiny", ["schedule.name=nfd", "model.patch_size=[2,4,4]"])
    assert load_config("tiny", ["model.patch_size=[2,4,4]"]).schedule.name == "rollout"
