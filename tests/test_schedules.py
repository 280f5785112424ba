"""The schedule contract: every schedule is found by name and called the same way by the Engine,
which has no branch on the schedule's name; a new schedule is one module plus one registry line."""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.schedulers.base import Schedule
from framecast.schedulers.registry import SCHEDULES, schedule_class

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.weights=", "model.num_layers=2", "sampler.steps=2", "sampler.guidance_scale=1"]


def test_registry_names_resolve_to_schedules_with_their_own_options():
    for name in SCHEDULES:
        cls = schedule_class(name)
        assert issubclass(cls, Schedule) and cls.name == name
        assert hasattr(cls.Options, "__dataclass_fields__")
    with pytest.raises(ValueError, match="unknown schedule 'fifo'; valid: full, rollout, dualparal, nfd, vin"):
        schedule_class("fifo")


def test_engine_never_branches_on_the_schedule_name():
    """No comparison against a schedule name, and no `schedule.name` read other than the lookup."""
    tree = ast.parse((ROOT / "framecast/engine/engine.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                assert not (isinstance(part, ast.Constant) and part.value in SCHEDULES), ast.unparse(node)


ECHO = """
from dataclasses import dataclass
from framecast.schedulers.base import Schedule


@dataclass
class EchoOptions:
    scale: float = 1.0  # multiply the initial noise


class EchoSchedule(Schedule):
    name = "echo"
    Options = EchoOptions

    def latents(self, req, actions, progress, record=None, cancel=None):
        lat = self.engine.initial_latents(req) * self.options.scale
        for f in range(lat.shape[2]):
            yield lat[:, :, f:f + 1]
"""

RUN_ECHO = """
import framecast.schedulers.registry as registry
registry.SCHEDULES["echo"] = "echo_schedule:EchoSchedule"   # the one registry line
from framecast import Engine
engine = Engine.from_preset("tiny", %r + ["schedule.name=echo", "schedule.echo.scale=0.0"])
frames = list(engine.stream("a red circle moving right", frames=3, seed=1))
assert engine.cfg.schedule.echo.scale == 0.0
assert len(frames) == 3 and all((f == 128).all() for f in frames), [f.mean() for f in frames]
print("ok")
"""


def test_a_new_schedule_is_one_module_and_one_registry_line(tmp_path):
    """A schedule module from outside the package, registered by one line, runs through the Engine
    with its own config section `schedule.echo.*`."""
    import subprocess
    import sys

    (tmp_path / "echo_schedule.py").write_text(ECHO)
    proc = subprocess.run([sys.executable, "-c", RUN_ECHO % SMALL], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def recorded_attention(q_BLNH, k_BSNH, v_BSNH, *, mask=None, scale=None, meta=None, calls):
    calls.append(meta)
    from framecast.models.attention import sdpa_attention
    return sdpa_attention(q_BLNH, k_BSNH, v_BSNH, mask=mask, scale=scale, meta=meta)


@pytest.mark.parametrize("schedule", ["full", "rollout", "dualparal", "nfd", "vin"])
def test_every_schedule_streams_through_the_configured_attention_backend(schedule, monkeypatch):
    """model.attn_backend reaches attention in every schedule: a recording backend sees self- and
    cross-attention calls of every layer, with the token grid, and the video is unchanged."""
    import functools
    import types

    from framecast import Engine
    from framecast.models import attention as attn

    calls = []
    module = types.ModuleType("recording_backend")
    module.fn = functools.partial(recorded_attention, calls=calls)
    module.ok = lambda q, k, v, mask: None
    monkeypatch.setitem(__import__("sys").modules, "recording_backend", module)
    monkeypatch.setitem(attn.BACKENDS, "record", attn.Backend("record", "recording_backend:fn",
                                                              "recording_backend:ok", "test"))
    preset = "tiny-play" if schedule == "nfd" else "tiny"
    overrides = SMALL + [f"schedule.name={schedule}", "schedule.dualparal.block_frames=2",
                         "schedule.dualparal.context_frames=1", "schedule.nfd.first_frame=generate",
                         "schedule.vin.chunk_frames=2", "schedule.vin.overlap_frames=1"]
    prompt = "" if schedule == "nfd" else "a red circle moving right"
    with Engine.from_preset(preset, overrides + ["model.attn_backend=record"]) as engine:
        recorded = np.stack(list(engine.stream(prompt, frames=5, seed=3)))
    with Engine.from_preset(preset, overrides) as engine:
        plain = np.stack(list(engine.stream(prompt, frames=5, seed=3)))
    assert recorded.shape == (5, 32, 32, 3) and np.array_equal(recorded, plain)
    assert {(c.kind, c.layer) for c in calls} == {(k, i) for k in ("self", "cross") for i in range(2)}
    assert all(c.grid[1:] == (8, 8) for c in calls)


def test_actions_only_for_schedules_that_take_them():
    from framecast import Engine

    engine = Engine.from_preset("tiny", SMALL)
    with pytest.raises(ValueError, match="actions are taken by schedules with actions"):
        engine.stream("a red circle moving right", frames=3, actions=["none"] * 3)
    with pytest.raises(ValueError, match="--resume needs a schedule with resume points"):
        engine.generate("a red circle moving right", frames=3, out="never.mp4", resume=True)
    assert not Path("never.mp4").exists()


def test_nfd_latents_out_equals_the_streamed_frames(tmp_path):
    """nfd goes through the same contract as the others: latents out, decoded by the Engine."""
    from framecast import Engine
    from framecast.engine.video_io import read_video

    engine = Engine.from_preset("tiny-play", ["model.num_layers=1", "model.weights=", "sampler.steps=2"])
    actions = ["none", "right", "right", "up"]
    streamed = np.stack(list(engine.stream("", frames=4, seed=2, actions=actions)))
    engine.generate("", frames=4, seed=2, actions=actions, out=f"{tmp_path}/v/", latents_out=tmp_path / "l.pt")
    lat = torch.load(tmp_path / "l.pt")
    assert lat.shape[2] == 4
    np.testing.assert_array_equal(read_video(tmp_path / "v"), streamed)


@pytest.mark.parametrize("schedule", ["full", "rollout", "dualparal", "nfd", "vin"])
def test_a_set_cancel_event_stops_the_schedule_between_steps(schedule):
    """Engine.stream(cancel=event): once the event is set the schedule stops at its next step
    (DualParal: its next worker call) and raises Cancelled; the engine stays usable."""
    import threading

    from framecast import Engine
    from framecast.schedulers.base import Cancelled

    preset = "tiny-play" if schedule == "nfd" else "tiny"
    prompt = "" if schedule == "nfd" else "a red circle moving right"
    overrides = SMALL + [f"schedule.name={schedule}", "schedule.nfd.first_frame=generate",
                         "schedule.dualparal.block_frames=2", "schedule.dualparal.context_frames=1",
                         "schedule.vin.chunk_frames=2", "schedule.vin.overlap_frames=1"]
    with Engine.from_preset(preset, overrides) as engine:
        calls = []
        engine.model.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(Cancelled):
            list(engine.stream(prompt, frames=24, seed=1, cancel=cancel))
        assert len(calls) <= 2, f"{len(calls)} model passes after the cancel"  # one step at most
        assert len(list(engine.stream(prompt, frames=3, seed=1))) == 3
