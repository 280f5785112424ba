"""Property-based tests (Hypothesis, bounded examples): generated bad values for the config loader
and the `framecast generate` command line end in a one-line error, never a traceback, and leave
nothing written. Deterministic for CI (`derandomize=True`, no example database), as
tests/test_server_properties.py; cases random runs found are pinned below as plain tests."""
from dataclasses import fields, is_dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framecast.config import Config, ConfigError, load_config

EXAMPLES = 80  # per property: bounded, part of CI


def _keys(node=None, prefix=""):
    node = node if node is not None else Config()
    out = []
    for f in fields(node):
        value = getattr(node, f.name)
        out += _keys(value, f"{prefix}{f.name}.") if is_dataclass(value) else [f"{prefix}{f.name}"]
    return out


KEYS = _keys()
BAD_VALUES = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e309", "-1e309", "99999999999999999999999", "[]", "{}",
                     "[1,[2,[3]]]", "null", "''", "x" * 300, "\u0000", "\ud800", "true", "1.5", "[1,2,3,4]",
                     "${oc.env:HOME}", "???", "a=b", "é", "-0.0"]),
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(KEYS), BAD_VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=30),                                          # anything at all
    st.tuples(st.text(min_size=1, max_size=12), BAD_VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
@given(st.lists(OVERRIDE, min_size=1, max_size=3))
def test_config_loader_takes_or_refuses_in_one_line(overrides):
    try:
        cfg = load_config("tiny", overrides)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
    else:
        assert isinstance(cfg, Config)


@pytest.mark.parametrize("override, needle", [
    ("vin.layers=${oc.env:FRAMECAST_TEST_TEXT}", "does not give a value vin.layers takes"),  # str into a list
    ("sampler.steps=${oc.env:FRAMECAST_TEST_TEXT}", "does not give a value sampler.steps takes"),  # str into an int
    ("vin.layers=${oc.env:FRAMECAST_TEST_UNSET}", "'FRAMECAST_TEST_UNSET' not found"),
])
def test_an_interpolation_of_the_wrong_kind_is_one_line_naming_the_override(monkeypatch, override, needle):
    """Found by a random run of the property above: ${...} resolves only when the config is built."""
    monkeypatch.setenv("FRAMECAST_TEST_TEXT", "abc")
    monkeypatch.delenv("FRAMECAST_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert str(e.value).startswith(f"override {override!r}: ") and needle in str(e.value)
    assert "\n" not in str(e.value)
    monkeypatch.setenv("FRAMECAST_TEST_STEPS", "7")  # an interpolation that fits its field is taken
    assert load_config("tiny", ["sampler.steps=${oc.env:FRAMECAST_TEST_STEPS}"]).sampler.steps == 7


class _Validated(Exception):
    """Raised where model work would begin: the request passed every check."""


ARG = st.one_of(BAD_VALUES, st.sampled_from(["1", "4", "8", "0.5", "32"]))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.one_of(st.text(max_size=60), st.just("a red circle moving right")),
       length=st.one_of(st.tuples(st.just("--frames"), ARG), st.tuples(st.just("--seconds"), ARG),
                        st.just(())),
       extra=st.lists(st.one_of(st.tuples(st.sampled_from(["--seed", "--steps", "--workers", "--block-frames",
                                                            "--context-frames", "--schedule", "--launcher"]), ARG),
                                OVERRIDE.map(lambda o: (o,))), max_size=3))
def test_generate_command_line_takes_or_refuses_in_one_line(tmp_path, capsys, monkeypatch, prompt, length, extra):
    from framecast.engine.engine import Engine
    from framecast.launch.cli import main

    def stop(self, *args, **kwargs):
        raise _Validated
        yield  # a generator, as _stream is

    monkeypatch.setattr(Engine, "_stream", stop)
    out = tmp_path / "v.mp4"
    argv = ["generate", prompt, "--out", str(out), "--quiet", *length, *[a for pair in extra for a in pair]]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    except _Validated:
        rc = None
    captured = capsys.readouterr()
    if rc is not None:
        assert rc == 2, (argv, captured.err)
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in captured.err, (argv, captured.err)
    assert not out.exists() and not any(p.name.endswith(".partial.mp4") for p in tmp_path.iterdir())
    for p in tmp_path.iterdir():  # a run that passed validation may leave nothing either
        assert p.name.endswith(".resume") is False, p
