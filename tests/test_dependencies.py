"""Dependencies earn their place: every import outside the standard library in the package, its
tests and benchmarks is declared in pyproject.toml (dependencies or an extra), and every declared
distribution is imported somewhere or named below with the reason it is needed without an import."""
import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DIST_OF = {"flash_attn": "flash-attn", "av": "av", "PIL": "pillow", "yaml": "pyyaml"}
# declared but used without an import statement of ours
NOT_IMPORTED = {
    "websockets": "uvicorn's WebSocket protocol for `framecast serve` (uvicorn ws='auto')",
    "accelerate": "diffusers' low-memory from_pretrained for the Wan VAE / text encoder",
    "httpx": "starlette.testclient (tests/test_server.py)",
    "pytest-timeout": "the pytest plugin behind [tool.pytest.ini_options] timeout",
    "flash-attn": "imported by name through the attention registry (models/attention.py)",
}
# our own modules: the package and the helper modules beside the tests and benchmarks
LOCAL = {"framecast", "bench"} | {p.stem for folder in ("tests", "bench") for p in (ROOT / folder).rglob("*.py")}


def _declared() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for extra in meta["optional-dependencies"].values() for r in extra]
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def _imported() -> dict[str, str]:
    """top-level module -> one file importing it (package, tests, bench)."""
    found = {}
    for folder in ("framecast", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return {m: f for m, f in found.items() if m not in sys.stdlib_module_names and m not in LOCAL}


def test_every_third_party_import_is_declared():
    declared = _declared()
    missing = {m: f for m, f in _imported().items() if DIST_OF.get(m, m).lower().replace("_", "-") not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_declared_dependency_is_used():
    used = {DIST_OF.get(m, m).lower().replace("_", "-") for m in _imported()} | set(NOT_IMPORTED)
    unused = sorted(_declared() - used)
    assert not unused, f"declared in pyproject.toml but never imported (drop them or say why here): {unused}"
