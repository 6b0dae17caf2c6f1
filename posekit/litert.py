"""The TFLite format, shared layer: PyTorch module -> fp32 .tflite bytes through litert-torch (`tflite_bytes`, one
function so that metadata can be added to the bytes before they are written), an interpreter factory (XNNPACK or
builtin kernels), signature I/O and an op census of a .tflite file.

Shared by convert (artifacts), quantize (which starts from these fp32 bytes: quantize/tflite.py), device_bench
(LUT entries: single blocks timed as they ship) and parity. Quantization lives in quantize/, not here.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posekit.errors import UserError
from posekit.io import atomic_path

# Ops whose arithmetic dominates a conv net; `float_compute_ops` reports any of these left in float.
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "AVERAGE_POOL_2D",
               "MAX_POOL_2D", "ADD", "MUL", "MEAN", "CONCATENATION", "DEPTH_TO_SPACE", "PAD", "RESIZE_BILINEAR")
SIGNATURE = "serving_default"


class SignatureModule(nn.Module):
    """Names the signature's tensors (kwarg in, dict out) and, with nhwc, makes the I/O channels-last (the
    layout TFLite runs in, so the converter folds the transposes instead of leaving them at the edges)."""

    def __init__(self, module: nn.Module, nhwc: bool, output_name: str):
        super().__init__()
        self.module, self.nhwc, self.output_name = module, nhwc, output_name

    def forward(self, image):  # the argument's name is the signature's input name
        x = image
        if self.nhwc and x.ndim == 4:
            x = x.permute(0, 3, 1, 2)
        y = self.module(x)
        if self.nhwc and y.ndim == 4:
            y = y.permute(0, 2, 3, 1)
        return {self.output_name: y}


def to_nhwc(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous() if nhwc and x.ndim == 4 else x


@contextlib.contextmanager
def quiet():
    """litert-torch and the quantizer print progress and absl logs on stdout; keep CLI output readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def tflite_bytes(module: nn.Module, sample: torch.Tensor, quant_config=None) -> bytes:
    """litert-torch conversion of `module` (already a SignatureModule, called as module(image=sample)) to .tflite
    bytes; `quant_config` is litert-torch's QuantConfig for PT2E-quantized modules (quantize/tflite.py)."""
    import litert_torch

    try:
        with quiet():
            edge = litert_torch.convert(module, sample_kwargs={"image": sample}, quant_config=quant_config)
    except Exception as e:  # name the op the converter choked on; the caller adds the module path
        raise UserError(f"litert-torch cannot convert this module: {first_line(e)}") from e
    return edge.model_content()


def to_tflite(module: nn.Module, sample_input: torch.Tensor, path: str | Path, precision: str = "fp32",
              nhwc: bool = True, *, output_name: str = "heatmaps") -> Path:
    """Convert `module` (eval mode, NCHW input like `sample_input`) to an fp32 .tflite at `path` (atomic).

    The signature is `serving_default` with input `image` and output `output_name`; nhwc: the .tflite's 4-D input
    and output are channels-last. Quantized .tflite files: quantize.tflite.to_tflite / quantize_tflite."""
    if precision != "fp32":
        raise UserError(f"precision {precision!r}: posekit.litert writes fp32 only (quantized: quantize.tflite)")
    module = SignatureModule(module.eval(), nhwc, output_name).eval()
    with torch.no_grad():
        model = tflite_bytes(module, to_nhwc(sample_input.detach().float(), nhwc))
    return write_tflite(model, path)


def write_tflite(model: bytes, path) -> Path:
    """Write .tflite bytes atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(model)
    return Path(path)


def interpreter(path: str | Path, threads: int = 1, xnnpack: bool = True):
    """An allocated ai_edge_litert Interpreter; xnnpack=False runs TFLite's builtin (non-delegated) kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.BUILTIN if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    return it


def io_details(path_or_interp) -> dict:
    """{'inputs': [...], 'outputs': [...]}, each {'name', 'shape', 'dtype', 'quantization': None|{scale, zero_point}}
    with signature names (e.g. 'image', 'heatmaps')."""
    it = interpreter(path_or_interp, xnnpack=False) if isinstance(path_or_interp, (str, Path)) else path_or_interp
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


@functools.cache
def _builtin_names() -> dict:
    from ai_edge_litert import schema_py_generated as s

    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}


def builtin_name(model, op) -> str:
    """The builtin name ('CONV_2D', ...) of operator `op` of a parsed schema Model; CUSTOM_<code> when unknown.
    Codes past 127 live only in BuiltinCode, older files only in DeprecatedBuiltinCode: the larger one is it."""
    oc = model.OperatorCodes(op.OpcodeIndex())
    code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
    return _builtin_names().get(code, f"CUSTOM_{code}")


def _ops(path: str | Path):
    """(op_name, [input dtypes], [output dtypes]) of every op in every subgraph, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as s

    buf = Path(path).read_bytes()
    m = s.Model.GetRootAs(buf, 0)
    types = {v: k.lower() for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            ins = [types[sg.Tensors(t).Type()] for t in op.InputsAsNumpy() if t >= 0] if op.InputsLength() else []
            outs = [types[sg.Tensors(t).Type()] for t in op.OutputsAsNumpy() if t >= 0] if op.OutputsLength() else []
            yield builtin_name(m, op), ins, outs


def op_counts(path: str | Path) -> dict[str, int]:
    """{op name: count} over the model, e.g. {'CONV_2D': 40, 'DEPTHWISE_CONV_2D': 30, ...}."""
    return dict(Counter(name for name, _, _ in _ops(path)))


def op_dtypes(path: str | Path) -> dict[str, int]:
    """{'OP:compute dtype': count}, the dtype an op computes in being its output's (a hybrid int8-weight op
    outputs float), e.g. {'CONV_2D:int8': 40, 'QUANTIZE:int8': 1, 'DEQUANTIZE:float32': 1}."""
    return dict(Counter(f"{name}:{outs[0] if outs else '-'}" for name, _, outs in _ops(path)))


def float_compute_ops(path: str | Path, ops: Iterable[str] = COMPUTE_OPS) -> dict[str, int]:
    """Compute ops that still run in float (float32/float16 output): empty for a fully-integer model."""
    ops = set(ops)
    return dict(Counter(name for name, _, outs in _ops(path) if name in ops and outs and outs[0].startswith("float")))
