"""Property-based tests (Hypothesis) of `framecast serve`'s message handlers: generated bad messages,
fields and query strings get an `error` message (short, no traceback), nothing is logged as an
internal error, and the server goes on serving (the same session answers again; /info answers).

Bounded and deterministic for CI (`derandomize=True`, no example database): 60 + 100 + 100 + 40 =
300 generated inputs per run. One app for the module (loading the engines is the slow part)."""
import json
import logging
import math
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from framecast.launch.protocol import MAX_ERROR_CHARS, MAX_GENERATE_FRAMES, MAX_MESSAGE_CHARS, MAX_SPECULATE, \
    POLICY_CODE, SEED_LIMIT, TEXT_SCHEDULES
from framecast.launch.server import make_app
from ws_messages import next_json
from framecast.world.captions import ACTIONS

PROMPT = "a red circle moving right"
BOUNDED = dict(deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])


class _Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def app():
    return make_app("tiny-play", "tiny", max_sessions=4, fps=1000.0, idle_timeout=0)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


@pytest.fixture(scope="module")
def internal_errors():
    """Records the server logs as internal errors (tracebacks): there must be none."""
    handler, logger = _Errors(), logging.getLogger("framecast.serve")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
deep = st.tuples(st.integers(2, 200_000), st.sampled_from("[{")).map(
    lambda d: ("[" * d[0] + "]" * d[0]) if d[1] == "[" else '{"a":' * d[0] + "1" + "}" * d[0])
messages = st.one_of(
    st.text(max_size=200),                                                   # any text, lone surrogates too
    json_values.map(json.dumps),                                             # any JSON (NaN, Infinity too)
    st.fixed_dictionaries({"type": st.sampled_from(["action", "stop", "generate", "cancel", "x"]) | json_values},
                          optional={"action": json_values, "prompt": json_values}).map(json.dumps),
    deep,                                                                    # nesting past the parser's depth
    st.integers(MAX_MESSAGE_CHARS + 1, 400_000).map(lambda n: "x" * n),     # past the size limit
)


def _is_error(msg) -> bool:
    assert msg["type"] == "error", msg
    assert len(msg["message"]) <= MAX_ERROR_CHARS + 40 and "Traceback" not in msg["message"], msg
    return True


def _valid_play(text: str) -> bool:
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(msg, dict) or len(text) > MAX_MESSAGE_CHARS:
        return False
    action = msg.get("action")
    return msg.get("type") == "stop" or (msg.get("type") == "action" and (
        (isinstance(action, str) and action in ACTIONS) or (type(action) is int and 0 <= action < len(ACTIONS))))


@settings(max_examples=60, **BOUNDED)
@given(text=messages)
def test_play_socket_answers_bad_messages_with_errors(client, internal_errors, text):
    assume(not _valid_play(text))
    with client.websocket_connect("/ws/play") as ws:
        assert next_json(ws)["type"] == "ready"
        ws.send_text(text)
        msg = next_json(ws)
        while msg["type"] == "stats":
            msg = next_json(ws)
        assert _is_error(msg)
        ws.send_json({"type": "stop"})  # the session still answers
        while (msg := next_json(ws))["type"] != "done":
            assert msg["type"] == "stats"
    assert client.get("/info").status_code == 200 and not internal_errors


@settings(max_examples=100, **BOUNDED)
@given(text=messages)
def test_generate_socket_answers_bad_messages_with_errors(client, internal_errors, text):
    try:  # a well-formed request is not a bad message
        assume(json.loads(text).get("type") != "generate")
    except (ValueError, RecursionError, AttributeError, TypeError):
        pass
    with client.websocket_connect("/ws/generate") as ws:
        assert next_json(ws)["type"] == "ready"
        ws.send_text(text)
        assert _is_error(next_json(ws))
        ws.send_json({"type": "cancel"})  # the session still answers
        assert "nothing to cancel" in next_json(ws)["message"]
    assert client.get("/info").status_code == 200 and not internal_errors


def _bad_frames(v) -> bool:
    return not (type(v) is int and 1 <= v <= MAX_GENERATE_FRAMES) and v is not None


def _bad_seconds(v) -> bool:
    return v is not None and not (type(v) in (int, float) and math.isfinite(v) and 0 < v <= MAX_GENERATE_FRAMES / 8)


fields = st.one_of(
    st.tuples(st.just("frames"), st.integers() | json_values).filter(lambda f: _bad_frames(f[1])),
    st.tuples(st.just("seconds"), st.floats() | st.integers() | json_values).filter(lambda f: _bad_seconds(f[1])),
    st.tuples(st.just("seed"), st.integers() | json_values),                     # valid seeds generate 2 frames
    st.tuples(st.just("schedule"), st.sampled_from(TEXT_SCHEDULES) | json_values),
    st.tuples(st.just("prompt"), st.text(max_size=300) | json_values),           # valid prompts generate too
    st.tuples(st.text(max_size=20), json_values),                               # unknown keys (lone surrogates too)
)


@settings(max_examples=100, **BOUNDED)
@given(field=fields)
def test_generate_fields_out_of_range_get_errors(client, internal_errors, field):
    name, value = field
    assume(name != "type")
    msg = {"type": "generate", "prompt": PROMPT, "frames": 2, name: value}
    if name == "seconds":
        del msg["frames"]
    with client.websocket_connect("/ws/generate") as ws:
        assert next_json(ws)["type"] == "ready"
        ws.send_text(json.dumps(msg))
        reply = next_json(ws)
        if reply["type"] == "started":  # a valid seed, schedule or prompt: the request runs to its end
            assert name in ("seed", "schedule", "prompt") and reply["frames"] == 2
            assert next_json(ws)["type"] == "done"
        else:
            assert _is_error(reply)
        ws.send_json({"type": "cancel"})
        assert "nothing to cancel" in next_json(ws)["message"]
    assert client.get("/info").status_code == 200 and not internal_errors


query_values = st.one_of(st.text(max_size=30), st.integers().map(str),
                         st.integers(SEED_LIMIT, 2**80).map(str), st.integers(MAX_SPECULATE + 1, 10**6).map(str))


@settings(max_examples=40, **BOUNDED)
@given(name=st.sampled_from(["seed", "speculate"]) | st.text(min_size=1, max_size=10), value=query_values)
def test_play_query_out_of_range_gets_an_error(client, internal_errors, name, value):
    with client.websocket_connect(f"/ws/play?{quote(name)}={quote(value)}") as ws:
        first = next_json(ws)
        if first["type"] == "ready":  # in range: the session runs
            ws.send_json({"type": "stop"})
            while next_json(ws)["type"] != "done":
                pass
        else:
            assert _is_error(first)
            with pytest.raises(WebSocketDisconnect) as closed:
                next_json(ws)
            assert closed.value.code == POLICY_CODE
    assert client.get("/info").status_code == 200 and not internal_errors
