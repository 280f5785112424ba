"""`framecast serve` through Starlette's in-process test client: play sessions, busy replies,
malformed messages, release on disconnect, text-to-video streaming."""
import numpy as np
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from framecast.engine.engine import Engine
from framecast.launch.protocol import BUSY_CODE, decode_frame, encode_frame
from framecast.launch.server import make_app


@pytest.fixture(scope="module")
def app():
    return make_app("tiny-play", "tiny", max_sessions=1, fps=1000.0)


def _frames(ws, n):
    """The next n frames (skipping JSON stats/error messages), as (index, action, pixels)."""
    out = []
    while len(out) < n:
        msg = ws.receive()
        if msg.get("bytes") is not None:
            out.append(decode_frame(msg["bytes"]))
    return out


def test_frame_encoding_round_trips():
    frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    index, action, pixels = decode_frame(encode_frame(7, 4, frame))
    assert (index, action) == (7, 4) and np.array_equal(pixels, frame)


def test_play_session_streams_the_engines_frames(app):
    client = TestClient(app)
    with client.websocket_connect("/ws/play?seed=3") as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["width"] == 32 and "right" in ready["actions"]
        first = _frames(ws, 2)
        ws.send_json({"type": "action", "action": "right"})
        later = _frames(ws, 6)
        ws.send_json({"type": "stop"})
        msgs = []
        while True:  # frames already in flight, then the final stats
            msg = ws.receive()
            if msg.get("text") is not None and '"done"' in msg["text"]:
                break
            msgs.append(msg)
    frames = first + later + [decode_frame(m["bytes"]) for m in msgs if m.get("bytes") is not None]
    assert [f[0] for f in frames] == list(range(len(frames)))  # in order, none lost
    assert frames[0][1] == 0 and frames[-1][1] == 4  # "none" until the message, then "right"
    # exactly what the engine makes for the same actions and seed
    session = Engine.from_preset("tiny-play").play_session(seed=3)
    for _, action, pixels in frames:
        assert np.array_equal(session.push(action), pixels)


def test_malformed_messages_get_errors_and_the_session_goes_on(app):
    client = TestClient(app)
    with client.websocket_connect("/ws/play") as ws:
        assert ws.receive_json()["type"] == "ready"
        for bad, words in (("not json", "not JSON"), ('{"type": "jump"}', "unknown message type 'jump'"),
                           ('{"type": "action", "action": "fly"}', "unknown action 'fly'"),
                           ("[1, 2]", "unknown message type 'list'")):
            ws.send_text(bad)
            while True:
                msg = ws.receive()
                if msg.get("text") is not None and '"error"' in msg["text"]:
                    assert words in msg["text"]
                    break
        ws.send_bytes(b"\x00\x01")
        while True:
            msg = ws.receive()
            if msg.get("text") is not None and '"error"' in msg["text"]:
                assert "binary messages are not accepted" in msg["text"]
                break
        assert len(_frames(ws, 2)) == 2  # still streaming


def test_busy_beyond_the_session_limit_and_release_on_disconnect(app):
    client = TestClient(app)
    with client.websocket_connect("/ws/play") as ws:
        assert ws.receive_json()["type"] == "ready"
        with client.websocket_connect("/ws/generate") as other:
            busy = other.receive_json()
            assert busy["type"] == "busy" and "1 sessions" in busy["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                other.receive_json()
            assert closed.value.code == BUSY_CODE
        _frames(ws, 1)
    # the first client left: its slot (and KV cache) are released
    for _ in range(50):
        if client.get("/info").json()["sessions"] == 0:
            break
        import time
        time.sleep(0.05)
    assert client.get("/info").json()["sessions"] == 0
    with client.websocket_connect("/ws/play") as ws:
        assert ws.receive_json()["type"] == "ready"


def test_text_to_video_streams_every_schedule(app):
    client = TestClient(app)
    with client.websocket_connect("/ws/generate") as ws:
        assert ws.receive_json()["schedules"] == ["rollout", "full", "dualparal"]
        ws.send_json({"type": "generate", "prompt": "a red circle moving right", "frames": 3, "schedule": "whoosh"})
        assert "schedule 'whoosh' is not served; valid: rollout, full, dualparal" in ws.receive_json()["message"]
        ws.send_json({"type": "generate", "prompt": "a purple circle moving right", "frames": 3})
        assert "purple" in ws.receive_json()["message"]
        ws.send_json({"type": "generate", "prompt": "a red circle", "frames": 0})
        assert "frames" in ws.receive_json()["message"]
        for schedule in ("rollout", "full", "dualparal"):
            ws.send_json({"type": "generate", "prompt": "a red circle moving right", "frames": 9, "seed": 1,
                          "schedule": schedule})
            frames = _frames(ws, 9)
            done = ws.receive_json()
            assert done["type"] == "done" and done["frames"] == 9
            engine = Engine.from_preset("tiny", [f"schedule.name={schedule}"])
            expected = list(engine.stream("a red circle moving right", frames=9, seed=1))
            assert all(np.array_equal(e, f[2]) for e, f in zip(expected, frames))


def test_index_page_and_info(app):
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and "/ws/play" in page.text and "ArrowRight" in page.text
    info = client.get("/info").json()
    assert info["play"]["actions"] == ["none", "up", "down", "left", "right"] and info["max_sessions"] == 1
