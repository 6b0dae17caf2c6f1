"""One runner per artifact format, each reading the manifest's description of its input and output.

Every runner has the same call: `runner(x)` with x np.float32 (N, 3, H, W) normalized as the PyTorch model takes it
-> heatmaps np.float32 (N, J, H/4, W/4). The runner turns x into what the artifact wants (pixels in [0, 255] when the
normalization is folded into the model or the input is a Core ML image, NHWC, int8/uint8 with the manifest's scale
and zero point) and its output back (NCHW, dequantized).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posekit.errors import UserError
from posekit.keypoints import MEAN, STD

from . import coreml_runtime

FORMATS = ("tflite", "onnx", "coreml-mlprogram", "coreml-neuralnetwork")


def to_pixels(x: np.ndarray, norm: dict | None = None) -> np.ndarray:
    """Normalized NCHW -> RGB pixels in [0, 255] (float). Crops are made from uint8 images, so this is exact
    after rounding."""
    mean = np.asarray((norm or {}).get("mean", MEAN), np.float32).reshape(1, 3, 1, 1)
    std = np.asarray((norm or {}).get("std", STD), np.float32).reshape(1, 3, 1, 1)
    scale = float((norm or {}).get("scale", 1 / 255))
    return np.clip(np.round((x * std + mean) / scale), 0, 255).astype(np.float32)


def _quantize(x: np.ndarray, q: dict, dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / q["scale"]) + q["zero_point"], info.min, info.max).astype(dtype)


class Runner:
    """Base: adapt input/output per the manifest entry; subclasses implement `_run(one_batch) -> raw output`."""

    engine = "?"

    def __init__(self, entry: dict, model_dir: Path, manifest: dict):
        self.entry, self.path = entry, model_dir / entry["file"]
        self.label = f"{entry['format']} {entry['precision']}"
        self.norm = manifest.get("normalization")
        try:
            self.inp, self.out = entry["inputs"][0], entry["outputs"][0]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{model_dir / 'manifest.json'}: artifacts[{entry['file']}]: inputs/outputs missing") \
                from None
        if not self.path.exists():
            raise UserError(f"{self.path}: artifact listed in the manifest is missing")
        self.batch = int(self.inp.get("shape", [1])[0] or 1)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        if self.inp.get("normalization_folded") or self.inp.get("kind") == "image":
            x = to_pixels(x, self.norm)
        if self.inp.get("layout", "NCHW") == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        dtype = self.inp.get("dtype", "float32")
        if dtype in ("int8", "uint8"):
            if self.inp.get("quantization"):
                return _quantize(x, self.inp["quantization"], dtype)
            if self.inp.get("normalization_folded") or self.inp.get("kind") == "image":  # raw pixels
                return np.clip(np.round(x), 0, 255).astype(np.uint8)
            raise UserError(f"{self.path}: manifest input dtype {dtype} without quantization scale/zero_point")
        return np.ascontiguousarray(x, dtype)

    def finish(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        q = self.out.get("quantization")
        if q and y.dtype in (np.int8, np.uint8, np.int16):
            y = (y.astype(np.float32) - q["zero_point"]) * q["scale"]
        y = y.astype(np.float32)
        if self.out.get("layout", "NCHW") == "NHWC":
            y = y.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(y)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        step = self.batch if self.batch > 0 else len(x)
        return np.concatenate([self.finish(self._run(self.prepare(x[i:i + step]))) for i in range(0, len(x), step)])

    def _run(self, x):
        raise NotImplementedError


class TFLiteRunner(Runner):
    engine = "ai_edge_litert Interpreter (XNNPACK)"

    def __init__(self, entry, model_dir, manifest, threads: int = 1):
        super().__init__(entry, model_dir, manifest)
        from runtime.tflite import interpreter

        try:
            self.it = interpreter(self.path, threads=threads)
        except Exception as e:
            raise UserError(f"{self.path}: TFLite cannot load it: {str(e).splitlines()[0]}") from None
        sigs = self.it.get_signature_list()
        if sigs:
            self.sig = self.it.get_signature_runner(next(iter(sigs)))
            (self.iname, _), = self.sig.get_input_details().items()
            outs = list(self.sig.get_output_details())  # a decoded file has two: heatmaps (named), keypoints
            self.oname = self.out.get("name") if len(outs) > 1 and self.out.get("name") in outs else outs[0]
        else:
            self.sig = None

    def _run(self, x):
        if self.sig is not None:
            return self.sig(**{self.iname: x})[self.oname]
        self.it.set_tensor(self.it.get_input_details()[0]["index"], x)
        self.it.invoke()
        return self.it.get_tensor(self.it.get_output_details()[0]["index"])


class OnnxRunner(Runner):
    engine = "onnxruntime (CPUExecutionProvider)"

    def __init__(self, entry, model_dir, manifest, threads: int = 1):
        super().__init__(entry, model_dir, manifest)
        from runtime.onnx import session

        self.sess = session(self.path, threads)
        self.iname = self.sess.get_inputs()[0].name
        shape0 = self.sess.get_inputs()[0].shape[0]
        self.batch = shape0 if isinstance(shape0, int) else 0  # symbolic batch: run all at once

    def _run(self, x):
        return self.sess.run(None, {self.iname: x})[0]


class CoreMLRunner(Runner):
    """Core ML: the real runtime (MLModel.predict) on macOS, the reference executor elsewhere."""

    def __init__(self, entry, model_dir, manifest, threads: int = 1, force_reference: bool = False):
        super().__init__(entry, model_dir, manifest)
        self.batch = 1
        self.name = self.inp.get("name", "image")
        self.oname = self.out.get("name", "heatmaps")
        self.native = coreml_runtime.available() and not force_reference
        if self.native:
            self.model = coreml_runtime.mlmodel(self.path, "CPU_ONLY")
            self.engine = "Core ML runtime (MLModel.predict, CPU_ONLY)"
        else:
            from runtime.coreml_reference import CoreMLProgram

            self.model = CoreMLProgram(self.path)
            self.engine = "Core ML reference executor (runtime.coreml_reference; MLModel.predict needs macOS)"
            self.name = self.model.inputs[0]["name"]
            self.oname = self.model.outputs[0]

    def _run(self, x):
        if self.native and self.inp.get("kind") == "image":  # MLModel.predict takes a PIL image there
            from PIL import Image

            hwc = (x[0] if self.inp.get("layout", "NCHW") == "NHWC" else x[0].transpose(1, 2, 0))
            x = Image.fromarray(np.clip(hwc, 0, 255).astype(np.uint8))
        return np.asarray(self.model.predict({self.name: x})[self.oname])


def make_runner(entry: dict, model_dir: Path, manifest: dict, threads: int = 1, coreml_reference: bool = False):
    fmt = entry.get("format")
    if fmt == "tflite":
        return TFLiteRunner(entry, model_dir, manifest, threads)
    if fmt == "onnx":
        return OnnxRunner(entry, model_dir, manifest, threads)
    if fmt in ("coreml-mlprogram", "coreml-neuralnetwork"):
        return CoreMLRunner(entry, model_dir, manifest, threads, force_reference=coreml_reference)
    raise UserError(f"{model_dir / 'manifest.json'}: artifacts[{entry.get('file')}].format: {fmt!r} "
                    f"(expected one of {', '.join(FORMATS)})")


class TorchRunner:
    """The reference: the PyTorch network the artifacts were made from."""

    engine = "PyTorch (eager, CPU, fp32)"
    label = "pytorch fp32"

    def __init__(self, net, batch: int = 16):
        self.net, self.batch = net.eval(), batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.concatenate([self.net(torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch], np.float32)))
                                   .numpy() for i in range(0, len(x), self.batch)])
