"""One small conversion shared by test_metadata and test_predict (cached per test session): the tiny arch of the
parity tests (64x48) through `python -m convert` with random weights (BatchNorm statistics from real crops), to
tflite fp32 + int8, ONNX and Core ML fp32, each with its in-file metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_CACHE: dict = {}
TARGETS = ["tflite-fp32", "tflite-int8", "onnx", "coreml-fp32"]


def converted(tmp_path_factory, root: Path) -> tuple[Path, dict]:
    if "out" not in _CACHE:
        from model.arch import dump
        from tests.parity_helpers import tiny_arch

        base = tmp_path_factory.mktemp("app")
        arch = dump(tiny_arch(), base / "tiny.yaml")
        out = base / "tiny"
        r = subprocess.run([sys.executable, "-m", "convert", "--arch", str(arch), "--calib", "4",
                            "--int8-candidates", "static_wi8_ai8", "--targets", *TARGETS, "--out", str(out)],
                           cwd=root, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        _CACHE["out"] = out
    out = _CACHE["out"]
    return out, json.loads((out / "manifest.json").read_text())
