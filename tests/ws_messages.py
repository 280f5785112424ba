"""Reading a framecast server socket in tests (Starlette's TestClient)."""
from __future__ import annotations

import json


def next_json(ws, limit: int = 100_000) -> dict:
    """The next JSON message, binary frames skipped (bounded); WebSocketDisconnect when it closes."""
    from starlette.websockets import WebSocketDisconnect

    for _ in range(limit):
        msg = ws.receive()
        if msg["type"] == "websocket.close":
            raise WebSocketDisconnect(msg.get("code", 1000))
        if msg.get("text") is not None:
            return json.loads(msg["text"])
    raise AssertionError(f"no JSON message in {limit} messages")
