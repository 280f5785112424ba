"""The wire protocol of `framecast serve`: its limits, the binary frame format, and how client
messages are parsed and quoted back — pure functions, no server state (framecast/launch/server.py
has the routes and sessions).
"""
from __future__ import annotations

import io
import json
import reprlib
import struct
from typing import Optional
from urllib.parse import urlsplit

import numpy as np

DEFAULT_HOST = "127.0.0.1"  # loopback unless asked otherwise
BUSY_CODE = 1013  # WebSocket "try again later"
POLICY_CODE = 1008  # WebSocket "policy violation": a refused query or Origin
TEXT_SCHEDULES = ("rollout", "full", "dualparal")  # the first is the default
MAX_GENERATE_FRAMES = 2048  # one request's frame cap on the server (a minute at 32 fps)
MAX_MESSAGE_CHARS = 16_384  # one client text message, checked before JSON parsing
WS_MAX_BYTES = 1 << 20  # uvicorn closes (1009) on a bigger WebSocket message before the app sees it
MAX_PROMPT_CHARS = 2_000  # a generate prompt (the built-in world takes 15 words; Wan's UMT5 512 tokens)
MAX_SPECULATE = 16  # ?speculate=K: a push drafts K frames (time and memory grow with K)
SEED_LIMIT = 2**63  # seeds in [0, 2**63), as torch.Generator.manual_seed takes them
MAX_FPS = 1000.0  # --fps upper bound (frames are paced by a sleep of 1/fps)
DEFAULT_IDLE_TIMEOUT = 300.0  # seconds without a client message before a session is closed
MAX_ERROR_CHARS = 300  # an error message never quotes more of the input than fits in this
PLAY_QUERY = ("seed", "speculate")
GENERATE_FIELDS = ("prompt", "frames", "seconds", "seed", "schedule")

_short = reprlib.Repr()  # bounded repr of client values: depth, items and string length all capped
_short.maxlevel, _short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 2, 40, 40, 4, 4


def excerpt(value) -> str:
    """A client value as a short, ASCII-safe excerpt for an error message."""
    return _short.repr(value).encode("ascii", "backslashreplace").decode("ascii")


def cut(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


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


class ClientError(ValueError):
    """A malformed client message: reported to that client, never raised further."""


def parse_message(text: Optional[str], allowed: tuple[str, ...]) -> dict:
    if text is None:
        raise ClientError("binary messages are not accepted; send JSON text")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ClientError(f"message has {len(text)} characters; at most {MAX_MESSAGE_CHARS} are accepted")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClientError(f"message is not JSON ({e.msg} at char {e.pos})") from None
    except RecursionError:
        raise ClientError("message is not accepted: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ClientError(f"message is not accepted: {cut(str(e), 120)}") from None
    if not isinstance(msg, dict) or msg.get("type") not in allowed:
        got = excerpt(msg.get("type")) if isinstance(msg, dict) else repr(type(msg).__name__)
        raise ClientError(f"unknown message type {got}; valid: {', '.join(allowed)}")
    return msg


def origin_key(url: str) -> Optional[tuple]:
    """'http://Host:80' -> ('http', 'host', 80); None when `url` is not scheme://host[:port]."""
    try:
        u = urlsplit(url.strip())
        port = u.port
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query or u.username:
        return None
    return u.scheme, u.hostname.lower(), port or (443 if u.scheme == "https" else 80)
