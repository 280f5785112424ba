"""`framecast serve`: an HTTP + WebSocket server that streams frames to a browser as they are made.

    framecast serve [--play-preset tiny-play] [--text-preset tiny] [--host 127.0.0.1] [--port 8000]
                    [--max-sessions 2] [--fps F] [--idle-timeout 300] [--allow-origin URL ...]

Routes (Starlette on uvicorn):
  GET  /             the page (static/index.html): live canvas, arrow keys -> actions, a prompt box
  GET  /info         JSON: presets, frame size, fps, actions, schedules, sessions in use, limits
  WS   /ws/play      one NFD play session per connection (its own KV cache, released on close).
                     Query: ?seed=S (0 <= S < 2**63) &speculate=K (1 <= K <= MAX_SPECULATE); nothing
                     else. Client -> server JSON: {"type": "action", "action": "right"} sets the held
                     action (until the next one); {"type": "stop"} ends the session. Server -> client:
                     {"type": "ready", ...} once, then per frame one binary message [uint32 frame
                     index | uint8 action id | 3 zero bytes | PNG], and {"type": "stats", ...} every
                     `fps` frames.
  WS   /ws/generate  text-to-video (no query): client sends {"type": "generate", "prompt": "...",
                     "frames": N | "seconds": S, "seed": S, "schedule": "rollout" (default) | "full" |
                     "dualparal"}; the server answers {"type": "started", "frames": N, ...}, streams
                     the same binary frames (action id 0), then {"type": "done", ...}. One request
                     at a time per connection; {"type": "cancel"} stops it ({"type": "cancelled",
                     "frames": n} follows), as does closing the connection.

Limits (what a client can ask for is bounded; anything outside gets an error naming the limit):
  - a client text message: at most MAX_MESSAGE_CHARS characters (larger WebSocket messages, over
    WS_MAX_BYTES, are closed by the server with 1009); binary messages are refused;
  - a prompt: at most MAX_PROMPT_CHARS characters; frames: 1..MAX_GENERATE_FRAMES (seconds: up to
    that many frames at the preset's fps); seed: 0..2**63-1;
  - sessions (play and generate together): --max-sessions; one more connection is accepted, told
    {"type": "busy", "message": ...} and closed with code 1013 (try again later);
  - idle: a session with no client message for --idle-timeout seconds (and, on /ws/generate, no
    request running) is told {"type": "idle", "message": ...} and closed (code 1000);
  - Origin: a WebSocket whose Origin header is present must come from the server's own page (the
    scheme://host:port the client addressed, from its Host header) or an --allow-origin; others are
    refused at the handshake (HTTP 403). Clients that send no Origin (scripts, not browsers) are let in.

Errors: whatever a client sends (malformed JSON, nesting, unknown types, fields or values, out-of-range
numbers, lone surrogates) gets {"type": "error", "message": ...} quoting at most a short excerpt of
the input (MAX_ERROR_CHARS), and the session goes on; nothing a client sends stops the server.

Model work, tokenising and PNG encoding run off the event loop, so /info and every other session keep
being served: play frames in worker threads (`asyncio.to_thread`, one short push each), a generate
request in its own daemon thread that checks a cancel flag between frames and passes it to
`Engine.stream(cancel=...)`, which stops between denoising steps. A
disconnect, a cancel message or server shutdown sets that flag; the session's slot is freed when the
thread stops; shutdown does not wait for it. All sessions share one loaded model per preset — each
session owns only its cache and decoder.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Optional

from framecast.launch.protocol import (
    BUSY_CODE, ClientError, DEFAULT_HOST, DEFAULT_IDLE_TIMEOUT, GENERATE_FIELDS, MAX_FPS,
    MAX_GENERATE_FRAMES, MAX_MESSAGE_CHARS, MAX_PROMPT_CHARS, MAX_SPECULATE, PLAY_QUERY, POLICY_CODE,
    SEED_LIMIT, TEXT_SCHEDULES, WS_MAX_BYTES, cut, encode_frame, excerpt,
    origin_key, parse_message,
)


log = logging.getLogger("framecast.serve")


@dataclass
class ServerState:
    """Everything the routes share, built once by `make_app` (no module-level state)."""

    play_preset: str
    text_preset: str
    max_sessions: int
    fps: Optional[float]  # play frames per second cap; None = the play preset's video.fps
    overrides: list = field(default_factory=list)
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # seconds; 0 = sessions never time out
    allow_origins: frozenset = frozenset()  # normalised (scheme, host, port) besides the server's own; "*" = any
    engines: dict = field(default_factory=dict)  # (preset, schedule) -> Engine, loaded at start-up
    sessions: int = 0
    jobs: set = field(default_factory=set)  # running generate jobs (cancelled at shutdown)
    lock: threading.Lock = field(default_factory=threading.Lock)  # sessions and jobs: job threads release too

    def engine(self, preset: str, schedule: Optional[str] = None):
        return self.engines[(preset, schedule)]

    def load(self) -> None:
        """Load every engine before serving (lazy loading from worker threads could race)."""
        from framecast.engine.engine import Engine

        keys = [(self.play_preset, None)] + [(self.text_preset, s) for s in TEXT_SCHEDULES]
        for preset, schedule in keys:
            extra = [] if schedule is None else [f"schedule.name={schedule}"]
            engine = Engine.from_preset(preset, list(self.overrides) + extra)
            engine.model, engine.text, engine.vae, engine.schedule  # noqa: B018 - build now
            self.engines[(preset, schedule)] = engine

    def close(self) -> None:
        """Cancel running requests and release every engine's workers (at server shutdown)."""
        with self.lock:
            jobs = list(self.jobs)
        for job in jobs:
            job.cancel.set()
        for engine in self.engines.values():
            engine.close()

    def try_acquire(self) -> bool:
        with self.lock:
            if self.sessions >= self.max_sessions:
                return False
            self.sessions += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.sessions -= 1

    def limits(self) -> dict:
        return {"message_chars": MAX_MESSAGE_CHARS, "prompt_chars": MAX_PROMPT_CHARS,
                "frames": MAX_GENERATE_FRAMES, "speculate": [1, MAX_SPECULATE], "seed": [0, SEED_LIMIT - 1],
                "idle_timeout": self.idle_timeout, "max_sessions": self.max_sessions}


async def send_json(ws, data: dict) -> None:
    """JSON as ASCII (a lone surrogate from the client cannot break the encoding), never NaN/Infinity."""
    await ws.send_text(json.dumps(data, ensure_ascii=True, allow_nan=False))


async def send_error(ws, error) -> None:
    await send_json(ws, {"type": "error", "message": cut(str(error))})


async def _receive_text(ws) -> Optional[str]:
    """The next client text (None for a binary message); raises WebSocketDisconnect on close."""
    from starlette.websockets import WebSocketDisconnect

    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message.get("text")


def origin_allowed(ws, state: ServerState) -> bool:
    """No Origin (not a browser), the server's own origin as the client addressed it, or an allowed one."""
    origin = ws.headers.get("origin")
    if origin is None or "*" in state.allow_origins:
        return True
    key = origin_key(origin)
    host = ws.headers.get("host")
    own = origin_key(f"{'https' if ws.url.scheme == 'wss' else 'http'}://{host}") if host else None
    return key is not None and (key == own or key in state.allow_origins)


async def _admit(ws, state: ServerState, query: tuple[str, ...]) -> bool:
    """Origin, query names and the session limit, in that order; True when the session may start
    (it then holds a slot)."""
    if not origin_allowed(ws, state):
        log.warning("refused a WebSocket from Origin %s", excerpt(ws.headers.get("origin")))
        await ws.close(code=POLICY_CODE)  # before accept: the handshake fails (HTTP 403)
        return False
    await ws.accept()
    unknown = [k for k in ws.query_params if k not in query]
    if unknown:
        valid = ", ".join(query) if query else "none"
        await send_error(ws, f"unknown query parameter(s) {', '.join(excerpt(k) for k in unknown[:4])}; valid: {valid}")
        await ws.close(code=POLICY_CODE)
        return False
    if state.try_acquire():
        return True
    await send_json(ws, {"type": "busy", "message": f"server busy: all {state.max_sessions} sessions are in use; "
                                                    f"try again later"})
    await ws.close(code=BUSY_CODE)
    return False


def _query_int(ws, name: str, default: Optional[int], low: int, high: int) -> Optional[int]:
    raw = ws.query_params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,20}", raw) or not low <= int(raw) <= high:
        raise ClientError(f"query {name}={excerpt(raw)} must be an integer in [{low}, {high}]")
    return int(raw)


async def _close_idle(ws, state: ServerState) -> None:
    await send_json(ws, {"type": "idle", "message": f"closed after {state.idle_timeout:g} s without a message "
                                                    f"from this client (server --idle-timeout); reconnect to go on"})
    await ws.close(code=1000)


async def _internal_error(ws, where: str) -> None:
    """Log an unexpected failure (with its traceback, here only) and tell the client in one line."""
    log.exception("%s failed", where)
    with contextlib.suppress(Exception):
        await send_json(ws, {"type": "error", "message": f"internal error in {where}; the session is closed "
                                                         f"(details in the server log)"})
        await ws.close(code=1011)


def _push_frame(session, action: int) -> bytes:
    """One play frame, made and PNG-encoded in a worker thread."""
    frame = session.push(action)
    return encode_frame(session.frames - 1, action, frame)


async def play_socket(ws) -> None:
    from starlette.websockets import WebSocketDisconnect

    from framecast.engine.play_session import action_id
    from framecast.world.captions import ACTIONS

    state: ServerState = ws.app.state.framecast
    if not await _admit(ws, state, PLAY_QUERY):
        return
    session = None
    try:
        engine = state.engine(state.play_preset)
        try:
            seed = _query_int(ws, "seed", None, 0, SEED_LIMIT - 1)
            speculate = _query_int(ws, "speculate", engine.cfg.schedule.nfd.speculate, 1, MAX_SPECULATE)
        except ClientError as e:
            await send_error(ws, e)
            await ws.close(code=POLICY_CODE)
            return
        session = await asyncio.to_thread(engine.play_session, "", seed, None, speculate)
        fps = state.fps or engine.cfg.video.fps
        await send_json(ws, {"type": "ready", "mode": "play", "preset": state.play_preset,
                             "width": engine.cfg.video.width, "height": engine.cfg.video.height, "fps": fps,
                             "actions": list(ACTIONS), "seed": session.seed, "speculate": speculate})
        loop = asyncio.get_running_loop()
        held = {"action": 0, "stop": False, "heard": loop.time()}  # heard: the last client message
        send_lock = asyncio.Lock()  # the receiver's error replies and the frame loop share the socket

        async def send(data) -> None:
            async with send_lock:
                await (ws.send_bytes(data) if isinstance(data, bytes) else send_json(ws, data))

        async def receive() -> None:
            while not held["stop"]:
                text = await _receive_text(ws)
                held["heard"] = loop.time()
                try:
                    msg = parse_message(text, ("action", "stop"))
                    if msg["type"] == "stop":
                        held["stop"] = True
                    else:
                        held["action"] = action_id(msg.get("action"))
                except ValueError as e:  # ClientError, or action_id's one-line error
                    await send({"type": "error", "message": cut(str(e))})

        receiver = asyncio.create_task(receive())
        try:
            next_at = time.perf_counter()
            while not held["stop"] and not receiver.done():
                if state.idle_timeout and loop.time() - held["heard"] > state.idle_timeout:
                    async with send_lock:
                        await _close_idle(ws, state)
                    return
                action = held["action"]
                await send(await asyncio.to_thread(_push_frame, session, action))
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
    except Exception:  # a bug, not the client: logged, the client told, the server goes on
        await _internal_error(ws, "the play session")
    finally:
        if session is not None:
            session.close()  # the KV cache goes with the connection
        state.release()


def _stats(session) -> dict:
    s = session.stats
    return {"type": "stats", "frames": session.frames, "model_fps": session.frames / max(session.model_s, 1e-9),
            "drafted": s.drafted, "accepted": s.accepted, "discarded": s.discarded}


async def _read_into(ws, inbox: asyncio.Queue) -> None:
    """Every client message into `inbox` as ("text", str | None); ("closed", None) at the end."""
    from starlette.websockets import WebSocketDisconnect

    try:
        while True:
            inbox.put_nowait(("text", await _receive_text(ws)))
    except WebSocketDisconnect:
        pass
    finally:
        inbox.put_nowait(("closed", None))


async def generate_socket(ws) -> None:
    """One loop owns the socket: client messages (from `_read_into`) and the running job's frames
    and end (from its thread) all arrive through one inbox, so sends never interleave."""
    from starlette.websockets import WebSocketDisconnect

    state: ServerState = ws.app.state.framecast
    if not await _admit(ws, state, ()):
        return
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    reader = asyncio.create_task(_read_into(ws, inbox))
    job: Optional[GenerateJob] = None
    try:
        await send_json(ws, {"type": "ready", "mode": "generate", "preset": state.text_preset,
                             "schedules": list(TEXT_SCHEDULES)})
        heard = loop.time()  # the last client message or the end of the last request
        while True:
            wait = None if job is not None or not state.idle_timeout else \
                max(0.0, heard + state.idle_timeout - loop.time())
            try:
                kind, payload = await asyncio.wait_for(inbox.get(), wait)
            except asyncio.TimeoutError:
                await _close_idle(ws, state)
                return
            if kind == "closed":
                return
            if kind == "frame":
                await ws.send_bytes(payload)
                job.sent()
            elif kind in ("started", "end"):
                await send_json(ws, payload)
                if kind == "end":
                    job, heard = None, loop.time()
            else:  # a client message
                heard = loop.time()
                try:
                    msg = parse_message(payload, ("generate", "cancel"))
                    if msg["type"] == "cancel":
                        if job is None:
                            raise ClientError("nothing to cancel: no generation is running")
                        job.cancel.set()  # its end message ("cancelled") follows
                    elif job is not None:
                        raise ClientError('a generation is running on this connection; send {"type": "cancel"} '
                                          'or wait for "done"')
                    else:
                        job = GenerateJob(state, generate_args(state, msg), loop, inbox)
                except ClientError as e:
                    await send_error(ws, e)
    except WebSocketDisconnect:
        pass
    except Exception:
        await _internal_error(ws, "the generate session")
    finally:
        reader.cancel()
        if job is None or not job.orphan():  # an orphaned job frees the slot when its thread stops
            state.release()


def generate_args(state: ServerState, msg: dict) -> dict:
    """Check a generate message's fields (cheap, on the event loop) -> keyword arguments for the job;
    the prompt's words are checked in the job's thread."""
    unknown = [k for k in msg if k not in GENERATE_FIELDS and k != "type"]
    if unknown:
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        raise ClientError(f"unknown field(s) {', '.join(excerpt(k) for k in unknown[:4])}{more}; "
                          f"valid: {', '.join(GENERATE_FIELDS)}")
    schedule = msg.get("schedule", TEXT_SCHEDULES[0])
    if not isinstance(schedule, str) or schedule not in TEXT_SCHEDULES:
        raise ClientError(f"schedule {excerpt(schedule)} is not served; valid: {', '.join(TEXT_SCHEDULES)}")
    prompt = msg.get("prompt")
    if not isinstance(prompt, str):
        raise ClientError(f"prompt must be a string, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ClientError(f"prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are accepted")
    frames, seconds, seed = msg.get("frames"), msg.get("seconds"), msg.get("seed")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)
                               or not 1 <= frames <= MAX_GENERATE_FRAMES):
        raise ClientError(f"frames must be an integer in [1, {MAX_GENERATE_FRAMES}], got {excerpt(frames)}")
    fps = state.engine(state.text_preset, schedule).cfg.video.fps
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not 0 < seconds <= MAX_GENERATE_FRAMES / fps):
        raise ClientError(f"seconds must be a number in (0, {MAX_GENERATE_FRAMES / fps:g}] "
                          f"({MAX_GENERATE_FRAMES} frames at {fps} fps), got {excerpt(seconds)}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT):
        raise ClientError(f"seed must be an integer in [0, 2**63), got {excerpt(seed)}")
    return {"schedule": schedule, "prompt": prompt, "frames": frames, "seconds": seconds, "seed": seed}


class GenerateJob:
    """One generate request, run in its own daemon thread: the request's checks (tokenising
    included), then each frame, PNG-encoded, posted to the connection's inbox. `cancel` is checked
    between frames (and handed to `Engine.stream` where it takes one). Daemon: a server shutting
    down does not wait for a frame in the making."""

    AHEAD = 8  # frames made before the socket has sent them (backpressure)

    def __init__(self, state: ServerState, args: dict, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue):
        self.state, self.args, self.loop, self.inbox = state, args, loop, inbox
        self.cancel = threading.Event()
        self._room = threading.Semaphore(self.AHEAD)
        self._lock = threading.Lock()
        self._ended = self._orphaned = False
        with state.lock:
            state.jobs.add(self)
        threading.Thread(target=self._run, name="framecast-generate", daemon=True).start()

    def sent(self) -> None:
        self._room.release()

    def orphan(self) -> bool:
        """The connection is gone: stop, and free its session slot when the thread ends. False when the
        thread has already ended (the caller frees the slot)."""
        self.cancel.set()
        with self._lock:
            self._orphaned = not self._ended
            return self._orphaned

    def _post(self, kind: str, payload) -> None:
        try:
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed: nobody is listening
            self.cancel.set()

    def _wait_for_room(self) -> bool:
        while not self._room.acquire(timeout=0.1):  # bounded by the cancel flag
            if self.cancel.is_set():
                return False
        return True

    def _run(self) -> None:
        t0, n, stream = time.perf_counter(), 0, None
        end = {"type": "done"}
        try:
            engine, stream, frames = _start_stream(self.state, self.args, self.cancel)
            self._post("started", {"type": "started", "frames": frames, "schedule": self.args["schedule"]})
            while not self.cancel.is_set():
                frame = next(stream, None)
                if frame is None or not self._wait_for_room():
                    break
                self._post("frame", encode_frame(n, 0, frame))
                n += 1
        except ValueError as e:  # the request's checks: ClientError, RequestError, UnknownWordsError
            end = {"type": "error", "message": cut(str(e))}
        except Exception:
            if not self.cancel.is_set():  # a schedule stopped by `cancel` raises Cancelled
                log.exception("a generate request failed")
                end = {"type": "error", "message": "internal error in this request (details in the server log)"}
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()  # the schedule's own cleanup (progress bars, pipelines) runs now
            if end["type"] == "done" and self.cancel.is_set():
                end = {"type": "cancelled"}
            if end["type"] != "error":
                end.update(frames=n, seconds=round(time.perf_counter() - t0, 3))
            self._post("end", end)
            with self.state.lock:
                self.state.jobs.discard(self)
            with self._lock:
                self._ended = True
                orphaned = self._orphaned
            if orphaned:
                self.state.release()


def _start_stream(state: ServerState, args: dict, cancel: threading.Event):
    """(engine, frame iterator, frames) for checked `args`; raises ValueError on a bad request."""
    engine = state.engine(state.text_preset, args["schedule"])
    req = engine.request(args["prompt"], frames=args["frames"], seconds=args["seconds"], seed=args["seed"])
    if req.frames > MAX_GENERATE_FRAMES:
        raise ClientError(f"frames={req.frames} is more than this server streams per request ({MAX_GENERATE_FRAMES})")
    # stops between steps; frames only, for every family (a sound model's band is dropped: the page plays no audio)
    stream = engine.stream(req.prompt, frames=req.frames, seed=req.seed, cancel=cancel, audio=False)
    return engine, iter(stream), req.frames


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
                         "sessions": state.sessions, "max_sessions": state.max_sessions, "limits": state.limits()})


def make_app(play_preset: str = "tiny-play", text_preset: str = "tiny", max_sessions: int = 2,
             fps: Optional[float] = None, overrides=(), *, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
             allow_origins=()):
    """The Starlette app with its engines loaded. `allow_origins`: origins (scheme://host[:port], or
    "*" for any) whose pages may open sessions besides the server's own."""
    from starlette.applications import Starlette
    from starlette.routing import Route, WebSocketRoute

    if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
        raise ValueError(f"--max-sessions must be an integer >= 1, got {max_sessions!r}")
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise ValueError(f"--fps must be a number in (0, {MAX_FPS:g}], got {fps}")
    if not (math.isfinite(idle_timeout) and idle_timeout >= 0):
        raise ValueError(f"--idle-timeout must be a number of seconds >= 0 (0 = never), got {idle_timeout}")
    origins = set()
    for origin in allow_origins:
        key = "*" if origin == "*" else origin_key(origin)
        if key is None:
            raise ValueError(f"--allow-origin {origin!r} is not an origin; expected scheme://host[:port] "
                             f"(http or https), e.g. http://localhost:3000, or *")
        origins.add(key)
    state = ServerState(play_preset, text_preset, max_sessions, fps, list(overrides),
                        idle_timeout=float(idle_timeout), allow_origins=frozenset(origins))
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


LIMITS_HELP = f"""limits:
  a client message: {MAX_MESSAGE_CHARS} characters (WebSocket messages over {WS_MAX_BYTES} bytes close the
  connection, 1009); a prompt: {MAX_PROMPT_CHARS} characters; frames per request: 1..{MAX_GENERATE_FRAMES};
  /ws/play?seed=0..2**63-1&speculate=1..{MAX_SPECULATE} (no other query; /ws/generate takes none).
  A WebSocket with an Origin header other than the server's own page (or an --allow-origin) is refused;
  clients without an Origin header (scripts) are let in."""


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = LIMITS_HELP
    parser.add_argument("--play-preset", default="tiny-play", help="action model for /ws/play (default tiny-play)")
    parser.add_argument("--text-preset", default="tiny", help="text-to-video model for /ws/generate (default tiny)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}, loopback only)")
    parser.add_argument("--port", type=int, default=8000,
                        help="TCP port, 0..65535 (default 8000; 0 = any free port, printed at start)")
    parser.add_argument("--max-sessions", type=int, default=2,
                        help="sessions (play and generate) served at once, >= 1; one more gets a 'busy' reply "
                             "(default 2)")
    parser.add_argument("--fps", type=float, default=None,
                        help=f"play frames per second cap, in (0, {MAX_FPS:g}] (default: the play preset's video.fps)")
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT, metavar="SECONDS",
                        help=f"close a session after this long without a client message (and no request running); "
                             f"0 = never (default {DEFAULT_IDLE_TIMEOUT:g})")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                        help="also let pages from this origin (scheme://host[:port], or * for any) open "
                             "WebSockets; repeatable (default: only the server's own page)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both presets")


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    app = make_app(args.play_preset, args.text_preset, args.max_sessions, args.fps, args.overrides,
                   idle_timeout=args.idle_timeout, allow_origins=args.allow_origin)
    # timeout_graceful_shutdown: sessions end at once on shutdown (a generate job's thread is not
    # waited for); the bound only guards against a handler that would not return.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", ws="auto",
                            ws_max_size=WS_MAX_BYTES, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    sock = config.bind_socket()  # bound here, so that --port 0 prints the port it got
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"framecast: serving {args.play_preset} (play) and {args.text_preset} (generate) on "
          f"http://{host}:{sock.getsockname()[1]}/ (Ctrl-C stops)", flush=True)
    server.run(sockets=[sock])
    return 0
