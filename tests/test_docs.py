"""Docs that point into JSON records (`FILE.json` → `key.path`) point at keys that exist."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_json_pointer_in_the_docs_resolves():
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "check_pointers.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
