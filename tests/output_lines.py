"""framecast's own output lines in a captured log that may also hold Ray's forwarded lines."""
from __future__ import annotations

import re


def ray_forwarded(line: str) -> bool:
    """A line Ray's log monitor forwarded from another process ("(raylet) ...", "(Actor pid=N) ..."),
    ANSI colours stripped: printed from Ray's own thread, in no fixed order with framecast's lines."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line).lstrip()
    return plain.startswith("(raylet)") or re.match(r"\(\w+ pid=\d+", plain) is not None


def last_own_line(text: str) -> str:
    """The last non-empty line that is not a Ray-forwarded one."""
    return [line for line in re.split(r"[\r\n]", text) if line.strip() and not ray_forwarded(line)][-1]
