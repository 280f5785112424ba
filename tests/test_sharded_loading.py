"""Sharded loading (issue 26, item 3): a DualParal stage builds its layers on the meta device and
reads only its own tensors, straight in the target dtype, and equals the full build then prune
bitwise; the stage never materialises the other stages' tensors; rank 0 encodes the prompt in
the model dtype and releases the encoder."""
import gc
import json
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

from framecast.config import load_config  # noqa: E402
from framecast.engine.components import build_model  # noqa: E402
from framecast.engine.wan_checkpoint import CheckpointError, convert_original_state_dict  # noqa: E402
from framecast.models.wan import WanBlock, WanModel  # noqa: E402
from framecast.parallel.stage import prune_blocks, split_layers  # noqa: E402
from tiny_wan import ORIGINAL_CONFIG, to_original  # noqa: E402

LAYERS = 6
TINY6 = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=32, ffn_dim=32, num_layers=LAYERS, cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
# every split of the 6 layers into W = 1, 2, 3 stages, plus an uneven one
STAGES = sorted({(r.start, r.stop) for w in (1, 2, 3) for r in split_layers(LAYERS, w)} | {(1, 4)})
DTYPES = ["float32", "bfloat16"]


@pytest.fixture(scope="module")
def ref6():
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY6).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _diffusers_config(ref) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(ref.config).items()}


@pytest.fixture(scope="module")
def folders(ref6, tmp_path_factory):
    """{layout: checkpoint folder} with the same weights: diffusers single file, diffusers sharded
    (index json), original Wan-AI (prefixed keys, two shards)."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    ref6.save_pretrained(root / "diffusers" / "transformer")
    out["diffusers"] = root / "diffusers"
    ref6.save_pretrained(root / "sharded" / "transformer", max_shard_size="30KB")
    assert len(list((root / "sharded" / "transformer").glob("*.safetensors"))) > 2
    out["sharded"] = root / "sharded"
    t = root / "original" / "transformer"
    t.mkdir(parents=True)
    (t / "config.json").write_text(json.dumps({**ORIGINAL_CONFIG, "num_layers": LAYERS, "freq_dim": 32}))
    sd = to_original(ref6.state_dict(), "model.diffusion_model.")
    keys = sorted(sd)
    shards = {"m-00001-of-00002.safetensors": keys[: len(keys) // 2], "m-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, str(t / name))
    (t / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    out["original"] = root / "original"
    return out


def _cfg(dtype: str, extra=()):
    return load_config("tiny", [f"model.dtype={dtype}", *extra])


def _ckpt_cfg(dtype: str):
    # shapes as the checkpoint's (only num_layers is read by the stage builder; the rest as a check)
    return _cfg(dtype, ["model.num_layers=6", "model.in_channels=4", "model.out_channels=4", "model.text_dim=16"])


def _today_full_then_prune(folder, dtype: str, layers: range) -> WanModel:
    """Today's worker, written out: every file loaded whole (fp32), the full model built on the
    host, cast, then pruned."""
    t = folder / "transformer"
    config = json.loads((t / "config.json").read_text())
    sd = {}
    for f in sorted(t.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    if "dim" in config:
        sd = convert_original_state_dict(sd)
        config = TINY6
    model = WanModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    model = model.cast(getattr(torch, dtype)) if dtype != "float32" else model
    prune_blocks(model, layers)
    return model.eval()


def _assert_stage_equal(got: nn.Module, want: nn.Module, layers: range):
    assert len(got.blocks) == len(want.blocks)
    for i, b in enumerate(got.blocks):
        assert (type(b) is nn.Identity) == (i not in layers), i
    g, w = got.state_dict(), want.state_dict()
    assert g.keys() == w.keys()
    for k in w:
        assert g[k].dtype == w[k].dtype and g[k].device == w[k].device, k
        assert torch.equal(g[k], w[k]), k
    assert not got.training
    assert not any(p.is_meta for p in got.parameters())


# ---- equality: sharded stage == full build then prune ------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["diffusers", "sharded", "original"])
@pytest.mark.parametrize("stage", STAGES)
def test_checkpoint_stage_equals_full_build_then_prune(folders, layout, dtype, stage):
    layers = range(*stage)
    cfg = _ckpt_cfg(dtype)
    got = build_model(cfg, folders[layout], layers=layers)
    _assert_stage_equal(got, _today_full_then_prune(folders[layout], dtype, layers), layers)
    full = build_model(cfg, folders[layout])  # the engine's full build, then pruned
    prune_blocks(full, layers)
    _assert_stage_equal(got, full, layers)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage", STAGES)
def test_builtin_weights_stage_equals_full_build_then_prune(dtype, stage):
    layers = range(*stage)
    cfg = _cfg(dtype)
    assert cfg.model.weights == "builtin:tiny" and cfg.model.num_layers == LAYERS
    full = build_model(cfg)
    prune_blocks(full, layers)
    _assert_stage_equal(build_model(cfg, layers=layers), full, layers)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage", STAGES)
def test_random_init_stage_equals_full_build_then_prune(dtype, stage):
    layers = range(*stage)
    cfg = _cfg(dtype, ["model.weights=", "model.init_seed=3"])
    full = build_model(cfg)
    prune_blocks(full, layers)
    rng = torch.get_rng_state()
    _assert_stage_equal(build_model(cfg, layers=layers), full, layers)
    assert torch.equal(rng, torch.get_rng_state())  # random init leaves the caller's RNG alone


def test_tiny_pipeline_folder_stages(tmp_path):
    """The tiny diffusers pipeline folder (tests/tiny_wan.py, 2 layers) with its config applied as
    the Engine does: each of its two stages equals the full build then prune."""
    from tiny_wan import save_pipeline

    from framecast.engine.components import apply_checkpoint_config, inspect_checkpoint

    folder = save_pipeline(tmp_path / "wan")
    for dtype in DTYPES:
        cfg = load_config("wan2.1-t2v-1.3b", [f"model.dtype={dtype}"])
        apply_checkpoint_config(cfg, inspect_checkpoint(folder), set())
        for layers in split_layers(cfg.model.num_layers, 2):
            full = build_model(cfg, folder)
            prune_blocks(full, layers)
            _assert_stage_equal(build_model(cfg, folder, layers=layers), full, layers)


# ---- memory: a stage holds and reads only its own tensors ---------------------------------------

def _block_keys(sd, i):
    return {k for k in sd if k.startswith(f"blocks.{i}.")}


def test_stage_holds_only_its_blocks_and_the_shared_modules(folders, ref6):
    layers = range(2, 4)
    model = build_model(_ckpt_cfg("bfloat16"), folders["diffusers"], layers=layers)
    full = ref6.state_dict()
    shared = {k for k in full if not k.startswith("blocks.")}
    assert set(model.state_dict()) == shared | _block_keys(full, 2) | _block_keys(full, 3)
    want_numel = sum(full[k].numel() for k in shared | _block_keys(full, 2) | _block_keys(full, 3))
    assert sum(p.numel() for p in model.parameters()) == want_numel
    blocks_numel = sum(full[k].numel() for k in full if k.startswith("blocks."))
    assert want_numel < sum(v.numel() for v in full.values()) - blocks_numel * 0.6  # 2 of 6 blocks


@pytest.mark.parametrize("layout", ["diffusers", "sharded", "original"])
def test_stage_reads_only_its_tensors_one_by_one(folders, layout, monkeypatch):
    """Every tensor read goes through safe_open().get_tensor (recorded); a whole-file load would
    be a full-size state dict and fails here."""
    import safetensors
    import safetensors.torch

    real = safetensors.safe_open
    read: list[str] = []

    class Recording:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, key):
            read.append(key)
            return self.inner.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def no_whole_file(*args, **kwargs):
        raise AssertionError("a whole safetensors file was loaded")

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    monkeypatch.setattr(safetensors.torch, "load_file", no_whole_file)
    layers = range(2, 4)
    model = build_model(_ckpt_cfg("bfloat16"), folders[layout], layers=layers)
    names = convert_original_state_dict(dict.fromkeys(read)) if layout == "original" else dict.fromkeys(read)
    assert len(read) == len(set(read))  # each tensor once
    assert set(names) == set(model.state_dict())  # exactly the stage's: blocks 2, 3 and the shared modules
    assert not any(k.startswith(("blocks.0.", "blocks.1.", "blocks.4.", "blocks.5.")) for k in names)


def test_random_stage_frees_each_dropped_block_at_once():
    """Random init constructs every block (same random draws as the full build) but a block
    outside the stage is gone before the next one is registered: never two at once."""
    from torch.nn.modules.module import register_module_module_registration_hook

    layers = range(2, 4)
    dropped: list = []
    alive_at_registration: list[int] = []

    def watch(parent, name, module):
        if type(module) is WanBlock and not next(module.parameters()).is_meta:  # not a shape-only skeleton
            gc.collect()
            alive_at_registration.append(sum(r() is not None for r in dropped))
            if int(name) not in layers:
                dropped.append(weakref.ref(module))

    handle = register_module_module_registration_hook(watch)
    try:
        model = build_model(_cfg("float32", ["model.weights="]), layers=layers)
    finally:
        handle.remove()
    assert len(alive_at_registration) == LAYERS and max(alive_at_registration) == 0
    gc.collect()
    assert all(r() is None for r in dropped)
    assert [type(b).__name__ for b in model.blocks] == ["Identity"] * 2 + ["WanBlock"] * 2 + ["Identity"] * 2


# ---- loud -------------------------------------------------------------------------------------

def _folder_with(tmp_path, ref6, edit):
    sd = dict(ref6.state_dict())
    edit(sd)
    t = tmp_path / "ck" / "transformer"
    t.mkdir(parents=True)
    (t / "config.json").write_text(json.dumps(_diffusers_config(ref6)))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(t / "diffusion_pytorch_model.safetensors"))
    return tmp_path / "ck"


def test_missing_key_in_another_stage_still_fails(tmp_path, ref6):
    folder = _folder_with(tmp_path, ref6, lambda sd: sd.pop("blocks.5.attn2.to_k.bias"))
    with pytest.raises(CheckpointError, match=r"1 missing \[blocks.5.attn2.to_k.bias\]"):
        build_model(_ckpt_cfg("float32"), folder, layers=range(0, 2))


def test_unexpected_key_fails(tmp_path, ref6):
    folder = _folder_with(tmp_path, ref6, lambda sd: sd.__setitem__("blocks.2.attn1.to_qkv.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"1 unexpected \[blocks.2.attn1.to_qkv.weight\]"):
        build_model(_ckpt_cfg("float32"), folder, layers=range(2, 4))


def test_bad_shape_fails(tmp_path, ref6):
    folder = _folder_with(tmp_path, ref6, lambda sd: sd.__setitem__("blocks.4.ffn.net.2.bias", torch.zeros(5)))
    with pytest.raises(CheckpointError, match=r"blocks.4.ffn.net.2.bias \(5,\) vs \(24,\)"):
        build_model(_ckpt_cfg("float32"), folder, layers=range(0, 2))


def test_block_count_is_checked(folders):
    with pytest.raises(CheckpointError, match="6 transformer blocks but model.num_layers=8"):
        build_model(_cfg("float32", ["model.num_layers=8"]), folders["diffusers"], layers=range(0, 2))
    with pytest.raises(CheckpointError, match=r"have 6 transformer blocks but model.num_layers=8: "
                                              r"use model.num_layers=6"):
        build_model(_cfg("float32", ["model.num_layers=8"]), layers=range(0, 2))
    with pytest.raises(ValueError, match="within model.num_layers=6"):
        build_model(_cfg("float32"), layers=range(4, 7))


# ---- the text encoder: once per request, in the model dtype, released ----------------------------

def test_rank0_encodes_in_the_model_dtype_and_releases_the_encoder(tmp_path, monkeypatch):
    from diffusers import WanPipeline
    from tiny_wan import save_pipeline

    import framecast.engine.text as text_mod
    from framecast import Engine
    from framecast.parallel.dims import ParallelDims
    from framecast.parallel.worker import DualParalWorker

    folder = save_pipeline(tmp_path / "wan")
    engine = Engine.from_checkpoint(folder, ["model.dtype=bfloat16", "schedule.name=dualparal", "video.height=32",
                                             "video.width=32", "sampler.steps=2", "text.max_length=16"])
    encoders: list = []
    real_init = text_mod.UMT5TextEncoder.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        encoders.append((weakref.ref(self.encoder), next(self.encoder.parameters()).dtype))

    monkeypatch.setattr(text_mod.UMT5TextEncoder, "__init__", init)
    worker = DualParalWorker(engine.cfg, str(folder), 0, ParallelDims(pp=1))
    req = engine.request("a cat walks on the grass", frames=5, negative_prompt="night city", seed=0)
    worker.setup(req)
    assert len(encoders) == 1 and encoders[0][1] == torch.bfloat16
    gc.collect()
    assert encoders[0][0]() is None  # released after encoding

    pipe = WanPipeline.from_pretrained(folder, dtype=torch.bfloat16)
    with torch.no_grad():  # as inside WanPipeline.__call__ (with grad on, SDPA takes another kernel)
        pos, neg = pipe.encode_prompt("a cat walks on the grass", "night city", max_sequence_length=16,
                                      dtype=torch.bfloat16)
    assert worker.text.dtype == torch.bfloat16
    assert torch.equal(worker.text, torch.cat([pos, neg]))
