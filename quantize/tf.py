"""A second TFLite path through TensorFlow (the optional `tf` extra: tensorflow + onnx2tf): the deployed net ->
ONNX (posekit.export_onnx) -> onnx2tf SavedModel -> tf.lite.TFLiteConverter, fp32 and full-integer int8 calibrated
on the same real crops as the other int8 candidates. Its fp32 is a cross-check of litert-torch (two independent
converters must agree with PyTorch), its int8 one more candidate scored like the others.

TensorFlow runs in its own process (quantize/tf_worker.py), which dies with ours; its output goes where ours does
(convert's log file)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from posekit.errors import UserError
from posekit.export_tflite import write_tflite
from posekit.keypoints import MEAN, STD
from posekit.proc import die_with_parent

NAME = {"fp32": "tensorflow TFLiteConverter fp32 (onnx2tf)",
        "int8": "tensorflow TFLiteConverter full-integer int8 (onnx2tf)"}
ONNX2TF_SAMPLES = "calibration_image_sample_data_20x128x128x3_float32.npy"
_CACHE: dict[str, dict[str, bytes]] = {}  # (weights, arch, calibration) digest -> {precision: .tflite bytes}


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "onnx2tf"))


def require() -> None:
    if not available():
        raise UserError("the TensorFlow TFLite path needs the `tf` extra: pip install -e '.[tf]' "
                        "(tensorflow, onnx2tf)")


def _digest(net, arch, calib) -> str:
    h = hashlib.sha256(repr(arch.to_dict()).encode())
    for v in net.state_dict().values():
        h.update(v.detach().contiguous().numpy().tobytes())
    for b in calib:
        h.update(torch.as_tensor(b).numpy().tobytes())
    return h.hexdigest()


def convert_bytes(net, arch, calib) -> dict[str, bytes]:
    """{'fp32': bytes, 'int8': bytes} of the deployed `net` through ONNX -> onnx2tf -> TFLiteConverter; `calib`:
    NCHW real crops (quantize.calibration). Cached per weights and crops (both targets share one conversion)."""
    require()
    key = _digest(net, arch, calib)
    if key in _CACHE:
        return _CACHE[key]
    from posekit.export_onnx import export_onnx
    from quantize.calibration import calibration_batches

    with tempfile.TemporaryDirectory(prefix="tfpath-") as d:
        work = Path(d)
        export_onnx(net, arch, work / "model.onnx")
        np.save(work / "calib.npy", torch.cat([torch.as_tensor(b) for b in calib]).permute(0, 2, 3, 1).numpy())
        # onnx2tf checks its conversion on 20 sample images it would otherwise download: give it real crops from
        # the bundled data instead (RGB in [0, 1], as its sample file), nothing is fetched at run time
        crops = torch.cat(calibration_batches((128, 128), None, 20))
        crops = crops * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        samples = crops.permute(0, 2, 3, 1).numpy().astype(np.float32)
        np.save(work / ONNX2TF_SAMPLES, np.resize(samples, (20, 128, 128, 3)))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                              os.environ.get("PYTHONPATH", "")])}
        r = subprocess.run([sys.executable, "-m", "quantize.tf_worker", str(work), "fp32", "int8"], env=env,
                           preexec_fn=die_with_parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace")
        sys.stdout.write(r.stdout[-20000:])  # the converters' chatter: convert's log file during a run
        if r.returncode != 0:
            last = [ln for ln in r.stdout.splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise UserError(f"TensorFlow TFLite path failed (exit {r.returncode}): {last[0][:300]}")
        out = {p: (work / f"tf_{p}.tflite").read_bytes() for p in ("fp32", "int8")}
    _CACHE.clear()
    _CACHE[key] = out
    return out


def onnx2tf_to_tflite(net, arch, calib, path, precision: str) -> Path:
    """Write the TensorFlow path's `precision` ('fp32' | 'int8') .tflite to `path` (atomic)."""
    if precision not in NAME:
        raise UserError(f"precision {precision!r}: the TensorFlow path writes fp32 or int8")
    return write_tflite(convert_bytes(net, arch, calib)[precision], path)
