"""The one block loop (`framecast.models.blocks.run_model`): equal to the model's forward, split
at any layer by handing hidden states on, and the only place in framecast that calls blocks."""
import ast
from pathlib import Path

import pytest
import torch

from framecast.models.attention import AttentionRuntime
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.registry import FAMILIES, model_class
from framecast.models.wan import WanModel

ROOT = Path(__file__).resolve().parents[1] / "framecast"


def tiny_model(layers=4, num_actions=5):
    torch.manual_seed(0)
    model = WanModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3,
                     out_channels=3, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers,
                     num_actions=num_actions)
    with torch.no_grad():  # zero-init tables (actions) and near-zero ones: make every weight matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(2, 3, 3, 8, 8, generator=g)
    t = torch.rand(2, 3, generator=g) * 1000
    cond = Conditioning(torch.randn(2, 5, 16, generator=g), torch.randint(0, 5, (2, 3), generator=g))
    return lat, t, cond


@torch.no_grad()
def test_default_equals_forward(case):
    model = tiny_model()
    lat, t, cond = case
    assert torch.equal(run_model(model, lat, t, cond), model(lat, t, cond.text_BSD, cond.actions_BF))
    plain = Conditioning(cond.text_BSD)
    assert torch.equal(run_model(model, lat, t[:, 0], plain), model(lat, t[:, 0], cond.text_BSD))


@torch.no_grad()
def test_split_in_two_halves_equals_whole(case):
    model = tiny_model()
    lat, t, cond = case
    whole = run_model(model, lat, t, cond)
    x_BLD = run_model(model, lat, t, cond, layers=range(0, 2), head=False)
    assert x_BLD.shape == (2, 3 * 4 * 4, 16)
    # a later stage embeds zeros (only the conditioning is used) and continues from x_BLD
    out = run_model(model, torch.zeros_like(lat), t, cond, layers=range(2, 4), x_BLD=x_BLD)
    assert torch.equal(out, whole)


@torch.no_grad()
def test_prepare_and_context_fields(case):
    model = tiny_model()
    lat, t, cond = case
    seen = []

    def prepare(ctx):
        seen.append((ctx.attention.backend, ctx.step, ctx.grid))
        return ctx

    run_model(model, lat, t, cond, attention=AttentionRuntime("sdpa"), step=3, prepare=prepare)
    assert seen == [("sdpa", 3, (3, 4, 4))]


def test_registry():
    assert model_class("wan") is WanModel
    with pytest.raises(ValueError, match="unknown model.kind 'nope'; valid: .*wan"):
        model_class("nope")
    assert all(":" in s for s in FAMILIES.values())


# ---- no second block loop ------------------------------------------------------------------------

def _is_blocks(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "blocks"


def block_calls(source: str) -> list[int]:
    """Line numbers where blocks are called: `<x>.blocks[i](...)` anywhere, or a loop over something
    that mentions `.blocks` calling its loop variable (`for block in m.blocks: x = block(x, ctx)`).
    Loops that only touch block parameters (init code) are fine."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript) and _is_blocks(node.func.value):
            lines.append(node.lineno)
        if isinstance(node, ast.For) and any(_is_blocks(n) for n in ast.walk(node.iter)):
            names = {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
            for call in (n for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.Call)):
                if isinstance(call.func, ast.Name) and call.func.id in names:
                    lines.append(call.lineno)
    return sorted(set(lines))


def test_block_call_detector_finds_the_patterns():
    assert block_calls("for block in model.blocks:\n    x = block(x, ctx)\n") == [2]
    assert block_calls("for i in self.layers:\n    x = self.model.blocks[i](x, ctx)\n") == [2]
    assert block_calls("for i, b in enumerate(m.blocks):\n    y = b(y, c)\n") == [2]
    assert block_calls("for block in model.blocks:\n    block.scale_shift_table.zero_()\n") == []


def test_only_blocks_py_calls_blocks():
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "models" / "blocks.py":
            continue
        lines = block_calls(path.read_text())
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    assert found == {}, f"a copy of the block loop: {found}; call framecast.models.blocks.run_model"
