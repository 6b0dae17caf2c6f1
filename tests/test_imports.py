"""The project's import graph, read from the sources (ast; nothing is imported or run).

- Layers: posekit < model < runtime < quantize < stages (device_bench, search, train, convert, parity, predict) <
  demo. A package imports only lower ranks, and a stage never imports another stage (in-function imports
  included: deferring an import hides it from Python, not from a reader). The same rank table as the repository
  hook /work/shared/hooks/layers.py.
- No project module imports a `__main__` module: an entry point holds the 3-line call of its stage's cli.py, and
  importing it runs it a second time under `python -m`.
- No cycles, counting in-function imports too.
- Entry points stay light: `python -m <stage> --help` imports neither torch nor tensorflow nor coremltools.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posekit.paths import REPO as ROOT

RANK = {"posekit": 0, "model": 1, "runtime": 2, "quantize": 3, "device_bench": 4, "search": 4, "train": 4,
        "convert": 4, "parity": 4, "predict": 4, "demo": 5}
STAGE_RANK = 4  # packages of this rank never import each other
PACKAGES = tuple(RANK)
STAGES = ("model", "device_bench", "search", "train", "convert", "quantize", "parity", "predict", "demo")
HEAVY = ("torch", "tensorflow", "coremltools")

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


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    """'src -> dst' for every import against the ranks (a lower package importing a higher one, or a stage
    importing another stage)."""
    bad = []
    for src, deps in sorted(edges.items()):
        a = src.split(".")[0]
        for dst in sorted(deps):
            b = dst.split(".")[0]
            if a != b and (RANK[b] > RANK[a] or RANK[a] == RANK[b] == STAGE_RANK):
                bad.append(f"{src} -> {dst}")
    return bad


def test_every_import_follows_the_layers():
    assert layer_violations(graph()) == []


def test_the_layer_check_catches_a_planted_import(tmp_path):
    """A file like posekit/metadata.py once was (an in-function import of parity), read by the same reader."""
    planted = tmp_path / "planted.py"
    planted.write_text("import numpy\n\n\ndef read(path):\n    from parity.report import write_report\n"
                       "    return write_report\n")
    mods = modules()
    edges = {"posekit.planted": imports("posekit.planted", planted, mods)}
    assert edges["posekit.planted"] == {"parity.report"}
    assert layer_violations(edges) == ["posekit.planted -> parity.report"]
    stage_to_stage = tmp_path / "s.py"
    stage_to_stage.write_text("from device_bench.lut import ensure_lut\n")
    assert layer_violations({"search.s": imports("search.s", stage_to_stage, mods)}) == [
        "search.s -> device_bench.lut"]
    assert layer_violations({"quantize.x": {"runtime.tflite", "model.arch", "posekit.io"}}) == []


@pytest.mark.parametrize("stage", STAGES)
def test_help_imports_no_heavy_library(stage):
    """`python -m <stage> --help` in a fresh interpreter: exit 0, and none of torch / tensorflow / coremltools
    in sys.modules afterwards (the stage's parser is built without them)."""
    code = ("import runpy, sys, json\n"
            f"sys.argv = ['{stage}', '--help']\n"
            "try:\n"
            f"    runpy.run_module('{stage}', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n"
            "    rc = e.code or 0\n"
            "else:\n"
            "    rc = 0\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "sys.stdout.flush()\n"
            "print('\\n' + json.dumps({'rc': rc, 'heavy': heavy}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0 and "usage:" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert res["heavy"] == [], f"python -m {stage} --help imports {sorted({m.split('.')[0] for m in res['heavy']})}"


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
    assert "demo.pipeline" in imports("demo.closed_loop", mods["demo.closed_loop"], mods)  # relative
    assert "model.arch" in imports("demo.closed_loop", mods["demo.closed_loop"], mods)  # absolute, in-function
    fd = "parity.first_divergence"
    assert "runtime.tflite" in imports(fd, mods[fd], mods)  # absolute, in-function


# Who may load or parse an artifact (issue 24): the regex of each job, and the modules allowed to do it.
LOADERS = {
    r"\bInterpreter\(": {"runtime/tflite.py", "runtime/arm64_worker.py"},  # host LiteRT; the aarch64 one under qemu
    r"\bMLModel\(": {"runtime/coreml_runtime.py", "runtime/metadata.py"},  # Core ML's runtime; metadata read only
    r"\bInferenceSession\(": {"runtime/onnx.py", "posekit/export_onnx.py"},  # the exporter's one check of its export
    r"\.GetRootAs\(": {"runtime/tflite_flatbuffer.py"},  # the .tflite flatbuffer
}


@pytest.mark.parametrize("pattern", LOADERS)
def test_one_module_loads_each_format(pattern):
    """In product code an artifact is loaded, run or parsed by its one module in runtime/ (test and tool code
    aside): no second TFLite interpreter, Core ML loader, ONNX session or flatbuffer parser grows elsewhere."""
    import re

    found = {str(f.relative_to(ROOT)) for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")
             if re.search(pattern, f.read_text())}
    assert found <= LOADERS[pattern], sorted(found - LOADERS[pattern])
