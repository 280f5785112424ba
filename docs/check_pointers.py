"""Check that every JSON pointer in the docs resolves: text like `FILE.json` → `a.b.c` (or
`FILE.json` -> `a.b`, `c`), in README.md, docs/, configs/, bench/ and framecast/, must name a file
that exists and a key path inside it. FILE without a folder is looked up in framecast/weights/ and
docs/. Prints each pointer that does not resolve and exits 1 if any; asserts nothing else.

    python docs/check_pointers.py
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTER = re.compile(r"`([\w./-]+\.json)`\s*(?:→|->)\s*((?:`[^`]+`(?:\s*(?:,|and)\s*(?=`))?)+)")
KEY = re.compile(r"`([^`]+)`")


def sources() -> list[Path]:
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("configs/*.yaml")]
    files += [*ROOT.glob("bench/**/*.py"), *ROOT.glob("framecast/**/*.py")]
    return [f for f in files if f.is_file()]


def find_json(name: str) -> Path | None:
    candidates = [ROOT / name] if "/" in name else [ROOT / "framecast/weights" / name, ROOT / "docs" / name]
    return next((c for c in candidates if c.is_file()), None)


def resolve(doc, path: str) -> bool:
    for part in path.split("."):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return False
    return True


def main() -> int:
    bad = n = 0
    for src in sources():
        text = src.read_text(encoding="utf-8")
        for m in POINTER.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            where = f"{src.relative_to(ROOT)}:{line}"
            path = find_json(m.group(1))
            if path is None:
                print(f"{where}: no such file {m.group(1)}")
                bad += 1
                continue
            doc = json.loads(path.read_text(encoding="utf-8"))
            for key in KEY.findall(m.group(2)):
                n += 1
                if not resolve(doc, key):
                    print(f"{where}: {m.group(1)} has no key {key!r}")
                    bad += 1
    print(f"{n} pointers checked, {bad} unresolved")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
