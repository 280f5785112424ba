"""`framecast serve` stays safe to leave open (issue 32): bounded messages, prompts and query
parameters; errors instead of dropped connections; cancellable generate requests; an Origin rule;
idle sessions closed; start-up checks. In-process (Starlette's test client) except the last test,
which runs `framecast serve --port 0` and stops it with SIGTERM; loopback only, no timing asserts."""
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from framecast.launch.protocol import MAX_ERROR_CHARS, MAX_GENERATE_FRAMES, MAX_MESSAGE_CHARS, MAX_PROMPT_CHARS, \
    MAX_SPECULATE, POLICY_CODE
from framecast.launch.server import make_app
from polling import wait_for
from ws_messages import next_json
from framecast.world.captions import UnknownWordsError, tokenize

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def app():
    return make_app("tiny-play", "tiny", max_sessions=1, fps=1000.0, idle_timeout=0,
                    allow_origins=["http://localhost:3000"])


def _next_of(ws, kind, limit=100_000):
    """The next JSON message of type `kind` (others skipped, bounded)."""
    for _ in range(limit):
        msg = next_json(ws)
        if msg["type"] == kind:
            return msg
    raise AssertionError(f"no {kind!r} message")


def _error(ws) -> str:
    msg = _next_of(ws, "error")
    assert len(msg["message"]) <= MAX_ERROR_CHARS + 40 and "Traceback" not in msg["message"]
    return msg["message"]


def _wait_sessions(client, n, seconds=180):
    """Bounded wait until /info reports `n` sessions in use (a freed slot is freed by another thread)."""
    wait_for(lambda: client.get("/info").json()["sessions"] == n, seconds, f"/info to report {n} sessions in use")


def test_unknown_words_error_is_linear_and_short():
    prompt = " ".join(f"w{i}" for i in range(150_000))  # the old sort key made this take minutes
    with pytest.raises(UnknownWordsError) as e:
        tokenize(prompt)
    msg = str(e.value)
    assert "'w0', 'w1', 'w2', 'w3', 'w4' and 149995 more" in msg and len(msg) < 300
    with pytest.raises(UnknownWordsError, match=r"'xxxxxxxxxxxxxxxxxxxxxxxx'\.\.\."):
        tokenize("x" * 10_000)


def test_huge_prompts_and_messages_get_errors_and_the_session_goes_on(app):
    client = TestClient(app)
    with client.websocket_connect("/ws/generate") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "generate", "prompt": "zz " * 40_000, "frames": 3})  # the issue's 40,000 words
        assert f"at most {MAX_MESSAGE_CHARS} are accepted" in _error(ws)
        assert client.get("/info").status_code == 200
        ws.send_json({"type": "generate", "prompt": "a" * (MAX_PROMPT_CHARS + 1), "frames": 3})
        assert f"prompt has {MAX_PROMPT_CHARS + 1} characters" in _error(ws)
        ws.send_json({"type": "generate", "prompt": " ".join(f"w{i}" for i in range(300)), "frames": 3})
        assert "and 295 more" in _error(ws)
        for depth in (100_000, 5_000):  # over the size limit; under it but deeper than the parser goes
            ws.send_text("[" * depth + "]" * depth)
            assert ("nested too deeply" if depth < MAX_MESSAGE_CHARS else "at most") in _error(ws)
        ws.send_json({"type": "generate", "prompt": PROMPT, "frames": 3})
        assert _next_of(ws, "done")["frames"] == 3
    with client.websocket_connect("/ws/play") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text("[" * 100_000 + "]" * 100_000)
        assert "at most" in _error(ws)
        ws.send_text("{\"a\":" * 2_000 + "1" + "}" * 2_000)
        assert "nested too deeply" in _error(ws)
        ws.send_json({"type": "stop"})
        assert _next_of(ws, "done")["frames"] >= 1


@pytest.mark.parametrize("query, words", [
    ("seed=18446744073709551616", "query seed='18446744073709551616' must be an integer in [0, 9223372036854775807]"),
    ("seed=-1", "query seed='-1'"), ("seed=abc", "query seed='abc'"), ("seed=" + "9" * 10_000, "query seed="),
    (f"speculate={MAX_SPECULATE + 1}", f"must be an integer in [1, {MAX_SPECULATE}]"), ("speculate=0", "speculate"),
    ("speculate=1024", "speculate"), ("fps=5", "unknown query parameter(s) 'fps'; valid: seed, speculate"),
])
def test_play_query_parameters_have_ranges(app, query, words):
    client = TestClient(app)
    with client.websocket_connect(f"/ws/play?{query}") as ws:
        assert words in _error(ws)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == POLICY_CODE
    _wait_sessions(client, 0)


def test_query_ranges_are_inclusive_and_generate_takes_no_query(app):
    client = TestClient(app)
    with client.websocket_connect(f"/ws/play?seed={2**63 - 1}&speculate={MAX_SPECULATE}") as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["seed"] == 2**63 - 1 and ready["speculate"] == MAX_SPECULATE
        assert ws.receive()["bytes"] is not None
    with client.websocket_connect("/ws/generate?seed=1") as ws:
        assert "unknown query parameter(s) 'seed'; valid: none" in _error(ws)


@pytest.mark.parametrize("text, words", [
    ('{"type": "generate", "prompt": "a red circle moving right", "seconds": 1e308}', "seconds must be a number in (0, 256]"),
    ('{"type": "generate", "prompt": "a red circle moving right", "seconds": Infinity}', "seconds must be"),
    ('{"type": "generate", "prompt": "a red circle moving right", "seconds": NaN}', "seconds must be"),
    ('{"type": "generate", "prompt": "a red circle", "\\ud800": 1}', "unknown field(s) '\\ud800'"),
    ('{"type": "generate", "prompt": "a \\ud800 circle", "frames": 3}', "does not know the word(s) '\\ud800'"),
    ('{"type": "generate", "prompt": "a", "frames": 1' + "0" * 5000 + "}", "message is not accepted"),
    ('{"type": "generate", "prompt": "a", "frames": true}', "frames must be an integer in [1, 2048], got True"),
    ('{"type": "generate", "prompt": "a", "frames": 2049}', "frames must be an integer in [1, 2048]"),
    ('{"type": "generate", "prompt": "a", "seed": 18446744073709551616}', "seed must be an integer in [0, 2**63)"),
    ('{"type": "generate", "prompt": ["a"]}', "prompt must be a string, got list"),
    ('{"type": ["generate"]}', "unknown message type ['generate']"),
    ('{"type": "cancel"}', "nothing to cancel"),
])
def test_bad_generate_values_get_errors_not_dropped_connections(app, text, words):
    client = TestClient(app)
    with client.websocket_connect("/ws/generate") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(text)
        assert words in _error(ws)
        ws.send_json({"type": "generate", "prompt": PROMPT, "frames": 2})  # still serving
        assert _next_of(ws, "done")["frames"] == 2


def test_cancel_stops_a_request_and_the_connection_goes_on(app):
    client = TestClient(app)
    with client.websocket_connect("/ws/generate") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "generate", "prompt": PROMPT, "frames": MAX_GENERATE_FRAMES})
        assert next_json(ws) == {"type": "started", "frames": MAX_GENERATE_FRAMES, "schedule": "rollout"}
        assert ws.receive()["bytes"] is not None
        ws.send_json({"type": "generate", "prompt": PROMPT, "frames": 3})
        assert "a generation is running" in _error(ws)
        ws.send_json({"type": "cancel"})
        cancelled = _next_of(ws, "cancelled")
        assert 1 <= cancelled["frames"] < MAX_GENERATE_FRAMES
        ws.send_json({"type": "generate", "prompt": PROMPT, "frames": 3})
        assert _next_of(ws, "done")["frames"] == 3


def test_disconnect_cancels_a_request_and_frees_its_slot(app):
    client = TestClient(app)
    with client.websocket_connect("/ws/generate") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "generate", "prompt": PROMPT, "frames": MAX_GENERATE_FRAMES})
        assert next_json(ws)["type"] == "started"
        assert ws.receive()["bytes"] is not None
    # the whole request would take minutes: the slot comes back once the job stops between frames
    _wait_sessions(client, 0)
    with client.websocket_connect("/ws/generate") as ws:
        assert ws.receive_json()["type"] == "ready"  # not "busy" (max_sessions=1)


@pytest.mark.parametrize("origin, allowed", [
    (None, True), ("http://testserver", True), ("http://TESTSERVER:80", True), ("http://localhost:3000", True),
    ("http://evil.example", False), ("https://testserver", False), ("http://testserver:8000", False),
    ("null", False), ("http://localhost:3001", False),
])
def test_only_the_servers_own_page_and_allowed_origins_may_connect(app, origin, allowed):
    client = TestClient(app)
    headers = {} if origin is None else {"origin": origin}
    for path in ("/ws/play", "/ws/generate"):
        if allowed:
            with client.websocket_connect(path, headers=headers) as ws:
                assert ws.receive_json()["type"] == "ready"
        else:
            with pytest.raises(WebSocketDisconnect) as refused:
                with client.websocket_connect(path, headers=headers):
                    pass
            assert refused.value.code == POLICY_CODE
        _wait_sessions(client, 0)


def test_idle_sessions_are_closed_with_a_reason():
    app = make_app("tiny-play", "tiny", max_sessions=1, fps=20.0, idle_timeout=3.0)  # generous: a busy machine
    client = TestClient(app)
    for path in ("/ws/play", "/ws/generate"):
        with client.websocket_connect(path) as ws:
            assert ws.receive_json()["type"] == "ready"
            idle = _next_of(ws, "idle")
            assert "without a message from this client" in idle["message"] and "--idle-timeout" in idle["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                next_json(ws)
            assert closed.value.code == 1000
        _wait_sessions(client, 0)
    with client.websocket_connect("/ws/generate") as ws:  # a running request is not idle
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "generate", "prompt": PROMPT, "frames": 25})
        assert _next_of(ws, "done")["frames"] == 25
        assert next_json(ws)["type"] == "idle"


@pytest.mark.parametrize("kwargs, words", [
    ({"fps": math.inf}, "--fps must be a number in (0, 1000], got inf"), ({"fps": 0.0}, "--fps"),
    ({"fps": math.nan}, "--fps"), ({"max_sessions": 0}, "--max-sessions"),
    ({"idle_timeout": -1.0}, "--idle-timeout"), ({"idle_timeout": math.inf}, "--idle-timeout"),
    ({"allow_origins": ["evil.example"]}, "--allow-origin 'evil.example' is not an origin"),
])
def test_bad_server_options_fail_before_loading(kwargs, words):
    with pytest.raises(ValueError) as e:
        make_app(**kwargs)
    assert words in str(e.value)


def test_serve_prints_its_port_refuses_foreign_origins_and_sigterm_stops_running_work():
    """`framecast serve --port 0`: the printed URL has the port it bound; a foreign Origin fails the
    handshake; SIGTERM while a 256-frame `full` request (minutes of work) runs exits cleanly without
    waiting for it."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    code = "from framecast.launch.cli import main; raise SystemExit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--port", "0", "--host", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        port, seen = None, []
        while port is None:
            line = lines.get(timeout=120)  # bounded: start-up loads the tiny engines
            seen.append(line)
            if m := re.search(r"serving .* on http://127\.0\.0\.1:(\d+)/", line):
                port = int(m.group(1))
        assert port != 0, seen
        info = None
        for _ in range(600):  # bounded: the socket is bound before the line is printed; listening starts after
            try:
                info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=60))
                break
            except OSError:
                time.sleep(0.1)
        assert info is not None and info["sessions"] == 0 and info["limits"]["prompt_chars"] == MAX_PROMPT_CHARS
        url = f"ws://127.0.0.1:{port}/ws/generate"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin="http://evil.example", open_timeout=60)
        assert refused.value.response.status_code == 403
        with connect(url, origin=f"http://127.0.0.1:{port}", open_timeout=60) as ws:
            assert json.loads(ws.recv(timeout=60))["type"] == "ready"
            ws.send(json.dumps({"type": "generate", "prompt": PROMPT, "frames": 256, "schedule": "full"}))
            assert json.loads(ws.recv(timeout=120))["type"] == "started"
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)  # the request alone would take minutes
        while not lines.empty():
            seen.append(lines.get())
        # uvicorn re-raises the signal after a graceful shutdown (the exit status says SIGTERM)
        assert rc in (0, -signal.SIGTERM) and any("Application shutdown complete" in s for s in seen), seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
