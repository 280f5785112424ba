"""`framecast serve`: an HTTP + WebSocket server that streams frames to a browser as they are made.

    framecast serve [--play-preset tiny-play] [--text-preset tiny] [--host 127.0.0.1] [--port 8000]
                    [--max-sessions 2] [--fps F]

Routes (Starlette on uvicorn):
  GET  /             the page (static/index.html): live canvas, arrow keys -> actions, a prompt box
  GET  /info         JSON: presets, frame size, fps, actions, schedules, sessions in use
  WS   /ws/play      one NFD play session per connection (its own KV cache, released on close).
                     Query: ?seed=S&speculate=K. Client -> server JSON: {"type": "action",
                     "action": "right"} sets the held action (until the next one); {"type": "stop"}
                     ends the session. Server -> client: {"type": "ready", ...} once, then per frame
                     one binary message [uint32 frame index | uint8 action id | 3 zero bytes | PNG],
                     and {"type": "stats", ...} every `fps` frames.
  WS   /ws/generate  text-to-video: client sends {"type": "generate", "prompt": "...", "frames": N |
                     "seconds": S, "seed": S, "schedule": "rollout" (default) | "full" | "dualparal"};
                     the server streams the same binary frames (action id 0), then {"type": "done", ...}.

A bounded number of sessions (play and generate together) run at once; one more connection is
accepted, told {"type": "busy", "message": ...} and closed with code 1013 (try again later). A
malformed message (not JSON, unknown type, unknown action, bad field) gets {"type": "error",
"message": ...} and the session goes on; nothing a client sends stops the server.

Model work runs in worker threads (`asyncio.to_thread`) so the event loop keeps serving; all
sessions share one loaded model per preset — each session owns only its cache and decoder.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import struct
import time
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Optional

import numpy as np

DEFAULT_HOST = "127.0.0.1"  # loopback unless asked otherwise
BUSY_CODE = 1013  # WebSocket "try again later"
TEXT_SCHEDULES = ("rollout", "full", "dualparal")  # the first is the default
MAX_GENERATE_FRAMES = 2048  # one request's frame cap on the server (a minute at 32 fps)


def encode_frame(index: int, action: int, frame_HW3: np.ndarray) -> bytes:
    """One socket frame: 8-byte header (uint32 LE index, uint8 action, 3 zero bytes) + PNG."""
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, frame_HW3, extension=".png")
    return struct.pack("<IB3x", index, action) + buf.getvalue()


def decode_frame(message: bytes) -> tuple[int, int, np.ndarray]:
    """The inverse of `encode_frame` (for clients and tests): (index, action, uint8 [H, W, 3])."""
    import imageio.v3 as iio

    index, action = struct.unpack("<IB3x", message[:8])
    return index, action, iio.imread(io.BytesIO(message[8:]), extension=".png")


@dataclass
class ServerState:
    """Everything the routes share, built once by `make_app` (no module-level state)."""

    play_preset: str
    text_preset: str
    max_sessions: int
    fps: Optional[float]  # play frames per second cap; None = the play preset's video.fps
    overrides: list = field(default_factory=list)
    engines: dict = field(default_factory=dict)  # (preset, schedule) -> Engine, loaded at start-up
    sessions: int = 0

    def engine(self, preset: str, schedule: Optional[str] = None):
        return self.engines[(preset, schedule)]

    def load(self) -> None:
        """Load every engine before serving (lazy loading from worker threads could race)."""
        from framecast.engine.engine import Engine

        keys = [(self.play_preset, None)] + [(self.text_preset, s) for s in TEXT_SCHEDULES]
        for preset, schedule in keys:
            extra = [] if schedule is None else [f"schedule.name={schedule}"]
            engine = Engine.from_preset(preset, list(self.overrides) + extra)
            engine.model, engine.text, engine.vae  # noqa: B018 - build now
            self.engines[(preset, schedule)] = engine

    def close(self) -> None:
        """Release every engine's workers (at server shutdown)."""
        for engine in self.engines.values():
            engine.close()

    def try_acquire(self) -> bool:
        if self.sessions >= self.max_sessions:
            return False
        self.sessions += 1  # the event loop is single-threaded: no lock needed
        return True

    def release(self) -> None:
        self.sessions -= 1


class ClientError(ValueError):
    """A malformed client message: reported to that client, never raised further."""


def parse_message(text: Optional[str], allowed: tuple[str, ...]) -> dict:
    if text is None:
        raise ClientError("binary messages are not accepted; send JSON text")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClientError(f"message is not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(msg, dict) or msg.get("type") not in allowed:
        got = msg.get("type") if isinstance(msg, dict) else type(msg).__name__
        raise ClientError(f"unknown message type {got!r}; valid: {', '.join(allowed)}")
    return msg


async def _receive_text(ws) -> Optional[str]:
    """The next client text (None for a binary message); raises WebSocketDisconnect on close."""
    from starlette.websockets import WebSocketDisconnect

    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message.get("text")


async def _refuse_if_busy(ws, state: ServerState) -> bool:
    await ws.accept()
    if state.try_acquire():
        return False
    await ws.send_json({"type": "busy", "message": f"server busy: all {state.max_sessions} sessions are in use; "
                                                   f"try again later"})
    await ws.close(code=BUSY_CODE)
    return True


def _query_int(ws, name: str, default: Optional[int], low: int) -> Optional[int]:
    raw = ws.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ClientError(f"query {name}={raw!r} must be an integer >= {low}") from None
    if value < low:
        raise ClientError(f"query {name}={value} must be >= {low}")
    return value


async def play_socket(ws) -> None:
    from starlette.websockets import WebSocketDisconnect

    from framecast.engine.play_session import action_id
    from framecast.world.captions import ACTIONS

    state: ServerState = ws.app.state.framecast
    if await _refuse_if_busy(ws, state):
        return
    session = None
    try:
        engine = state.engine(state.play_preset)
        try:
            seed = _query_int(ws, "seed", None, 0)
            speculate = _query_int(ws, "speculate", engine.cfg.schedule.nfd.speculate, 1)
        except ClientError as e:
            await ws.send_json({"type": "error", "message": str(e)})
            await ws.close(code=1008)
            return
        session = await asyncio.to_thread(engine.play_session, "", seed, None, speculate)
        fps = state.fps or engine.cfg.video.fps
        await ws.send_json({"type": "ready", "mode": "play", "preset": state.play_preset,
                            "width": engine.cfg.video.width, "height": engine.cfg.video.height, "fps": fps,
                            "actions": list(ACTIONS), "seed": session.seed, "speculate": speculate})
        held = {"action": 0, "stop": False}
        send_lock = asyncio.Lock()  # the receiver's error replies and the frame loop share the socket

        async def send(data) -> None:
            async with send_lock:
                await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_json(data))

        async def receive() -> None:
            while not held["stop"]:
                try:
                    msg = parse_message(await _receive_text(ws), ("action", "stop"))
                    if msg["type"] == "stop":
                        held["stop"] = True
                    else:
                        held["action"] = action_id(msg.get("action"))
                except (ClientError, ValueError) as e:
                    await send({"type": "error", "message": str(e)})

        receiver = asyncio.create_task(receive())
        try:
            next_at = time.perf_counter()
            while not held["stop"] and not receiver.done():
                action = held["action"]
                frame = await asyncio.to_thread(session.push, action)
                await send(encode_frame(session.frames - 1, action, frame))
                if session.frames % max(1, round(fps)) == 0:
                    await send(_stats(session))
                next_at += 1.0 / fps
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at = max(next_at, time.perf_counter() - 1.0 / fps)  # no burst after a slow frame
            if receiver.done() and receiver.exception() is not None:
                raise receiver.exception()
            await send({**_stats(session), "type": "done"})
            await ws.close()
        finally:
            receiver.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        if session is not None:
            session.close()  # the KV cache goes with the connection
        state.release()


def _stats(session) -> dict:
    s = session.stats
    return {"type": "stats", "frames": session.frames, "model_fps": session.frames / max(session.model_s, 1e-9),
            "drafted": s.drafted, "accepted": s.accepted, "discarded": s.discarded}


async def generate_socket(ws) -> None:
    from starlette.websockets import WebSocketDisconnect

    state: ServerState = ws.app.state.framecast
    if await _refuse_if_busy(ws, state):
        return
    try:
        await ws.send_json({"type": "ready", "mode": "generate", "preset": state.text_preset,
                            "schedules": list(TEXT_SCHEDULES)})
        while True:
            try:
                msg = parse_message(await _receive_text(ws), ("generate",))
                engine, stream = _start_generate(state, msg)
            except (ClientError, ValueError) as e:
                await ws.send_json({"type": "error", "message": str(e)})
                continue
            t0, n = time.perf_counter(), 0
            it = iter(stream)
            while (frame := await asyncio.to_thread(next, it, None)) is not None:
                await ws.send_bytes(encode_frame(n, 0, frame))
                n += 1
            await ws.send_json({"type": "done", "frames": n, "seconds": round(time.perf_counter() - t0, 3)})
    except WebSocketDisconnect:
        pass
    finally:
        state.release()


def _start_generate(state: ServerState, msg: dict):
    """Validate a generate request (one-line errors) and return (engine, frame iterator)."""
    schedule = msg.get("schedule", TEXT_SCHEDULES[0])
    if schedule not in TEXT_SCHEDULES:
        raise ClientError(f"schedule {schedule!r} is not served; valid: {', '.join(TEXT_SCHEDULES)}")
    unknown = sorted(set(msg) - {"type", "prompt", "frames", "seconds", "seed", "schedule"})
    if unknown:
        raise ClientError(f"unknown field(s) {', '.join(unknown)}; valid: prompt, frames, seconds, seed, schedule")
    engine = state.engine(state.text_preset, schedule)
    req = engine.request(msg.get("prompt"), frames=msg.get("frames"), seconds=msg.get("seconds"),
                         seed=msg.get("seed"))
    if req.frames > MAX_GENERATE_FRAMES:
        raise ClientError(f"frames={req.frames} is more than this server streams per request ({MAX_GENERATE_FRAMES})")
    return engine, engine.stream(req.prompt, frames=req.frames, seed=req.seed)


async def index(request):
    from starlette.responses import HTMLResponse

    return HTMLResponse(files("framecast.launch").joinpath("static/index.html").read_text())


async def info(request):
    from starlette.responses import JSONResponse

    from framecast.world.captions import ACTIONS

    state: ServerState = request.app.state.framecast
    play = state.engine(state.play_preset).cfg
    return JSONResponse({"play": {"preset": state.play_preset, "width": play.video.width,
                                  "height": play.video.height, "fps": state.fps or play.video.fps,
                                  "actions": list(ACTIONS)},
                         "generate": {"preset": state.text_preset, "schedules": list(TEXT_SCHEDULES)},
                         "sessions": state.sessions, "max_sessions": state.max_sessions})


def make_app(play_preset: str = "tiny-play", text_preset: str = "tiny", max_sessions: int = 2,
             fps: Optional[float] = None, overrides=()):
    """The Starlette app with its engines loaded."""
    from starlette.applications import Starlette
    from starlette.routing import Route, WebSocketRoute

    if max_sessions < 1:
        raise ValueError(f"--max-sessions must be >= 1, got {max_sessions}")
    if fps is not None and not fps > 0:
        raise ValueError(f"--fps must be > 0, got {fps}")
    state = ServerState(play_preset, text_preset, max_sessions, fps, list(overrides))
    state.load()

    @contextlib.asynccontextmanager
    async def lifespan(app):  # one engine per (preset, schedule) for the server's life; workers closed at the end
        yield
        state.close()

    app = Starlette(routes=[Route("/", index), Route("/info", info),
                            WebSocketRoute("/ws/play", play_socket), WebSocketRoute("/ws/generate", generate_socket)],
                    lifespan=lifespan)
    app.state.framecast = state
    return app


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--play-preset", default="tiny-play", help="action model for /ws/play (default tiny-play)")
    parser.add_argument("--text-preset", default="tiny", help="text-to-video model for /ws/generate (default tiny)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    parser.add_argument("--max-sessions", type=int, default=2,
                        help="sessions served at once; one more gets a 'busy' reply (default 2)")
    parser.add_argument("--fps", type=float, default=None,
                        help="play frames per second cap (default: the play preset's video.fps)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both presets")


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    app = make_app(args.play_preset, args.text_preset, args.max_sessions, args.fps, args.overrides)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", ws="auto")
    server = uvicorn.Server(config)
    print(f"framecast: serving {args.play_preset} (play) and {args.text_preset} (generate) on "
          f"http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    server.run()
    return 0
