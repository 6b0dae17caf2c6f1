"""One small trained model and its artifacts, shared by test_metadata and test_predict (made once per test session):
the tiny arch of the parity tests (64x48) fitted for a few epochs on the bundled train images with `python -m train`
(so its heatmaps have real peaks and int8 keypoints are comparable; random weights give flat maps whose argmax is
noise), then `python -m convert` to tflite fp32 + int8, ONNX and Core ML fp32, each with its in-file metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_CACHE: dict = {}
TARGETS = ["tflite-fp32", "tflite-int8", "onnx", "coreml-fp32"]
EPOCHS = 50


def _run(args, root):
    r = subprocess.run([sys.executable, "-m", *args], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def converted(tmp_path_factory, root: Path) -> tuple[Path, dict]:
    if "out" not in _CACHE:
        from model.arch import dump
        from tests.parity_helpers import tiny_arch

        base = tmp_path_factory.mktemp("app")
        arch = dump(tiny_arch(), base / "tiny.yaml")
        _run(["train", "--arch", str(arch), "--input", "64x48", "--epochs", str(EPOCHS), "--batch-size", "32",
              "--lr", "1e-2", "--no-augment", "--eval-every", "1000", "--threads", "1", "--no-progress",
              "--out", str(base / "train")], root)
        out = base / "tiny"
        _run(["convert", "--ckpt", str(base / "train" / "best.pt"), "--calib", "8", "--int8-candidates",
              "static_wi8_ai8", "--targets", *TARGETS, "--out", str(out)], root)
        _CACHE["out"] = out
    out = _CACHE["out"]
    return out, json.loads((out / "manifest.json").read_text())
