"""The project's import graph, read from the sources (ast; nothing is imported or run).

- No project module imports a `__main__` module (anywhere, in-function imports included): an entry point holds
  argument parsing only, and importing it runs it a second time under `python -m`.
- No cycles, counting in-function imports too: deferring an import hides a cycle from Python, not from a reader.
"""

import ast
from pathlib import Path

from posekit.paths import REPO as ROOT

PACKAGES = ("model", "posekit", "runtime", "train", "search", "convert", "quantize", "device_bench", "parity", "demo", "predict")

# Known violations (none: a new one must be fixed, not listed here).
KNOWN_MAIN_IMPORTS: set = set()
KNOWN_CYCLES: set = set()


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = p.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, mods) -> set[str]:
    """The project modules the file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:  # `import a.b.c` where only a.b is ours, or a name inside a module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph():
    mods = modules()
    return {name: imports(name, path, mods) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[frozenset]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_a_main_module():
    found = {(src, dst) for src, deps in graph().items() for dst in deps if dst.endswith(".__main__")}
    assert found <= KNOWN_MAIN_IMPORTS, sorted(found - KNOWN_MAIN_IMPORTS)


def test_no_import_cycles():
    found = set(cycles(graph()))
    assert found <= KNOWN_CYCLES, [sorted(c) for c in found - KNOWN_CYCLES]


def test_the_checker_sees_cycles_and_main_imports():
    """The checker itself on a known graph, so an empty result means no violations rather than a blind reader."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    mods = modules()
    assert {"model.arch", "model.latency", "posekit.errors"} <= imports("model.space", mods["model.space"], mods)
    assert "search.cli" in imports("search.closed_loop", mods["search.closed_loop"], mods)  # relative, in-function
