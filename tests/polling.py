"""Waiting for a state, never for a time: tests poll a predicate with a generous bound."""
from __future__ import annotations

import time


def wait_for(pred, timeout: float, what: str, every: float = 0.05):
    """The first truthy value of `pred()`, polled every `every` s; AssertionError naming `what`
    after `timeout` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
