"""The one TFLite loader: an interpreter with its kernel choice (XNNPACK or TFLite's builtin kernels), the signature's
I/O and a run that takes and returns float. Every ai_edge_litert Interpreter in product code is made here.

Writing .tflite files: posekit/export_tflite.py (float), quantize/ (quantized). Reading the flatbuffer itself (op
census, tensors, quantization parameters): runtime/tflite_flatbuffer.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from posekit.export_tflite import SIGNATURE

from .tflite_kernels import KERNEL_SETS

KERNELS = tuple(KERNEL_SETS)  # the kernel sets (runtime/tflite_kernels.py: the one registry)


def interpreter(path_or_bytes: str | Path | bytes, threads: int = 1, kernels: str = "xnnpack",
                preserve_all_tensors: bool = False):
    """An allocated ai_edge_litert Interpreter of a file or of .tflite bytes. kernels "xnnpack": the XNNPACK
    delegate (what ships); "builtin": TFLite's reference-like builtin kernels (no default delegate);
    "xnnpack+builtin-dwconv": XNNPACK with its slow >25-tap depthwise convs on builtin kernels, routed in memory
    (runtime/tflite_kernels.py). preserve_all_tensors keeps every intermediate tensor readable after invoke (a
    debugging mode, slower)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from .tflite_kernels import load_args

    src, delegates = load_args(path_or_bytes, kernels)
    kind = OpResolverType.BUILTIN if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": the callers asking for it are
        warnings.simplefilter("ignore")
        it = Interpreter(**src, num_threads=threads, experimental_op_resolver_type=kind,
                         experimental_preserve_all_tensors=preserve_all_tensors)
    it.allocate_tensors()
    return it


def io_details(path_or_interp) -> dict:
    """{'inputs': [...], 'outputs': [...]}, each {'name', 'shape', 'dtype', 'quantization': None|{scale, zero_point}}
    with signature names (e.g. 'image', 'heatmaps')."""
    it = interpreter(path_or_interp, kernels="builtin") if isinstance(path_or_interp, (str, Path)) else path_or_interp
    runner = it.get_signature_runner(SIGNATURE)

    def one(name, d):
        scale, zp = d["quantization"]
        q = {"scale": float(scale), "zero_point": int(zp)} if scale else None
        return {"name": name, "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "quantization": q}

    return {"inputs": [one(k, v) for k, v in runner.get_input_details().items()],
            "outputs": [one(k, v) for k, v in runner.get_output_details().items()]}


def io_entries(path, normalization_folded: bool = False) -> tuple[list, list]:
    """A .tflite's inputs and outputs as manifest entries (NHWC tensors; names, shapes, dtypes, quantization)."""
    d = io_details(path)
    ins = [{**x, "layout": "NHWC", "kind": "tensor", "normalization_folded": normalization_folded}
           for x in d["inputs"]]
    return ins, [{**x, "layout": "NHWC"} for x in d["outputs"]]


def run(it, x: np.ndarray) -> np.ndarray:
    """Run the single-input, single-output signature on `x` (already in the model's layout); quantizes float input
    for an int8-I/O model and dequantizes its output, so callers always see float."""
    runner = it.get_signature_runner(SIGNATURE)
    (iname, idet), = runner.get_input_details().items()
    (oname, odet), = runner.get_output_details().items()
    x = np.asarray(x)
    if idet["dtype"] != np.float32 and x.dtype == np.float32:
        scale, zp = idet["quantization"]
        info = np.iinfo(idet["dtype"])
        x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(idet["dtype"])
    y = runner(**{iname: x})[oname]
    if odet["dtype"] != np.float32:
        scale, zp = odet["quantization"]
        y = (y.astype(np.float32) - zp) * scale
    return y
