"""The import structure of the package: no cycles between framecast modules (lazy imports inside
functions count: they are still a dependency, only deferred), and registries that import nothing
heavy (no CUDA extensions, Ray, diffusers or the web server just to look up a name)."""
import ast
import json
import subprocess
import sys
from collections import deque
from pathlib import Path


# ------------------------------------------------------------------------------------ the graph
def _module_names(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the package rooted at `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node anywhere in the tree (function bodies included), except under
    `if TYPE_CHECKING:` (its `else:` branch still counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: modules of the same package it imports}. `import a.b.c` -> a.b.c; `from a.b import
    c` -> a.b.c when that is a module, else a.b; relative imports resolved against the importer's
    package. Only the module named is an edge, not the packages above it."""
    modules = _module_names(root, package)
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]  # the package relative imports start from
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module
                targets = []
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            for target in targets:
                while target and target not in modules:  # `import pkg.mod.attr`-style leftovers: nearest module
                    target = target.rpartition(".")[0] if target.startswith(package + ".") else ""
                if target:
                    graph[name].add(target)
    return graph


def cyclic_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components that hold a cycle: more than one module, or one module
    that imports itself."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):  # Tarjan, iterative (no recursion limit on big packages)
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                scc = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    scc.add(member)
                    if member == node:
                        break
                sccs.append(scc)
    return [scc for scc in sccs if len(scc) > 1 or next(iter(scc)) in graph[next(iter(scc))]]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle [a, b, ..., a] for each cyclic component (`cyclic_components`), through
    its alphabetically first module; [a, a] for a module that imports itself; sorted, so failures
    read the same each run."""
    cycles = []
    for scc in cyclic_components(graph):
        if len(scc) == 1:  # a module importing itself
            cycles.append([*scc, *scc])
            continue
        start = min(scc)
        # BFS inside the component from `start` back to `start`: the shortest cycle through it
        parent, queue, end = {}, deque([start]), None
        while queue and end is None:
            node = queue.popleft()
            for child in sorted(graph[node] & scc):
                if child == start:
                    end = node
                    break
                if child not in parent:
                    parent[child] = node
                    queue.append(child)
        path = [end]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append([*reversed(path), start])
    return sorted(cycles)


def _format(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(c) for c in cycles)


# ------------------------------------------------------------------------------------ the tests
def test_no_import_cycles():
    import framecast

    root = Path(framecast.__file__).parent
    graph = import_graph(root, "framecast")
    assert "framecast.models.wan" in graph and "framecast.engine.engine" in graph  # the walk saw the package
    cycles = find_cycles(graph)
    members = "\n".join(f"  {len(c)} modules in one cycle group: {', '.join(sorted(c))}"
                        for c in sorted(cyclic_components(graph), key=min) if len(c) > 2)
    assert not cycles, (f"{len(cycles)} import cycle(s) between framecast modules (lazy imports count; "
                        f"`if TYPE_CHECKING:` ones do not):\n{_format(cycles)}\n{members}")


def _write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


ACYCLIC = {
    "__init__.py": "",
    "a.py": "import os\nfrom pkg import b\nfrom pkg.sub import c\n",
    "b.py": "from .sub.c import thing\n",
    "sub/__init__.py": "",
    "sub/c.py": ("from typing import TYPE_CHECKING\nimport typing\nthing = 1\n"
                 "if TYPE_CHECKING:\n    from pkg.a import x\n"             # type-only: no edge
                 "if typing.TYPE_CHECKING:\n    import pkg.b\n"),
    "sub/d.py": "from ..b import thing\nfrom . import c\n",
}


def test_cycle_finder_passes_an_acyclic_package(tmp_path):
    graph = import_graph(_write_package(tmp_path, ACYCLIC), "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b", "pkg.sub.c"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(),
                     "pkg.sub.c": set(), "pkg.sub.d": {"pkg.b", "pkg.sub.c"}}
    assert find_cycles(graph) == []


def test_cycle_finder_reports_lazy_relative_and_self_cycles(tmp_path):
    files = dict(ACYCLIC)
    # c -> a only inside a function (a lazy import still closes the cycle a -> b -> c -> a);
    # the TYPE_CHECKING `else:` branch counts; sub <-> d; e imports itself.
    files["a.py"] = "from pkg import b\n"
    files["e.py"] = "import pkg.e\n"
    files["sub/c.py"] = ("from typing import TYPE_CHECKING\nthing = 1\n"
                         "def late():\n    from ..a import x\n    return x\n"
                         "if TYPE_CHECKING:\n    pass\nelse:\n    import pkg.sub\n")
    files["sub/__init__.py"] = "from . import d\n"
    files["sub/d.py"] = "from pkg.sub import d\nimport pkg.sub\n"
    graph = import_graph(_write_package(tmp_path, files), "pkg")
    assert graph["pkg.sub.c"] == {"pkg.a", "pkg.sub"}
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"], ["pkg.e", "pkg.e"],
                      ["pkg.sub", "pkg.sub.d", "pkg.sub"]], cycles
    assert _format(cycles[:1]) == "pkg.a -> pkg.b -> pkg.sub.c -> pkg.a"
    assert find_cycles({"x": {"x"}, "y": set()}) == [["x", "x"]]


HEAVY = ["flash_attn", "ray", "triton", "diffusers", "transformers", "starlette", "uvicorn"]
REGISTRIES = ["framecast.models.attention", "framecast.models.registry", "framecast.schedulers.registry"]


def test_registries_import_nothing_heavy():
    """Looking up an attention backend, a model or a scheduler by name loads none of the heavy
    optional stacks (a fresh interpreter, so nothing else in the test session has imported them)."""
    code = (
        "import importlib, importlib.util, json, sys\n"
        f"names = [n for n in {REGISTRIES!r} if importlib.util.find_spec(n) is not None]\n"
        "for n in names:\n    importlib.import_module(n)\n"
        f"print(json.dumps({{'imported': names, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "framecast.models.attention" in result["imported"]
    print("imported:", result["imported"])
    assert result["heavy"] == [], f"importing {result['imported']} loaded {result['heavy']}"
