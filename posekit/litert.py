"""PyTorch module -> .tflite (fp32 / fp16 / int8 / int8-dynamic) through litert-torch and ai-edge-quantizer, an
interpreter factory (XNNPACK or builtin kernels) and an op census of a .tflite file.

Shared by convert/quantize (artifacts), device_bench (LUT entries: single blocks timed as they ship) and parity.
Quantization paths:
- "aeq" (default): litert-torch converts fp32, then ai-edge-quantizer applies a recipe (static_wi8_ai8,
  static_wi8_ai16, dynamic_wi8_afp32, fp16 float casting) calibrated on `calib`. Every compute op is quantized,
  TRANSPOSE_CONV included.
- "pt2e": torch.export -> torchao prepare_pt2e/convert_pt2e with litert-torch's PT2EQuantizer, then litert-torch.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posekit.errors import UserError
from posekit.io import atomic_path

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
STATIC_RECIPES = ("static_wi8_ai8", "static_wi8_ai16")
# Ops whose arithmetic dominates a conv net; `float_compute_ops` reports any of these left in float.
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "AVERAGE_POOL_2D",
               "MAX_POOL_2D", "ADD", "MUL", "MEAN", "CONCATENATION", "DEPTH_TO_SPACE", "PAD", "RESIZE_BILINEAR")
SIGNATURE = "serving_default"


class _IO(nn.Module):
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


def _nhwc(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous() if nhwc and x.ndim == 4 else x


@contextlib.contextmanager
def _quiet():
    """litert-torch and the quantizer print progress and absl logs on stdout; keep CLI output readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _convert(module: nn.Module, sample: torch.Tensor, quant_config=None) -> bytes:
    import litert_torch

    try:
        with _quiet():
            edge = litert_torch.convert(module, sample_kwargs={"image": sample}, quant_config=quant_config)
    except Exception as e:  # name the op the converter choked on; the caller adds the module path
        raise UserError(f"litert-torch cannot convert this module: {_first_line(e)}") from e
    return edge.model_content()


def _calib_batches(calib: Iterable | None, nhwc: bool, what: str) -> list[np.ndarray]:
    if calib is None:
        raise UserError(f"{what} needs calibration data (calib=<iterable of NCHW input batches>)")
    out = [_nhwc(torch.as_tensor(b, dtype=torch.float32), nhwc).numpy() for b in calib]
    if not out:
        raise UserError(f"{what}: calibration data is empty")
    return out


def _aeq_recipe(name: str, int8_io: bool = True):
    from ai_edge_quantizer import recipe

    if name == "fp16":  # fp16 weights, float compute: the TFLite "float16 quantization" form (DEQUANTIZE'd weights)
        return [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
                 "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                               "compute_precision": "FLOAT", "explicit_dequantize": True}}]
    fn = getattr(recipe, name, None)
    if fn is None:
        raise UserError(f"unknown ai-edge-quantizer recipe {name!r}")
    r = fn()
    if not int8_io:  # static recipes quantize the graph's input/output tensors too; keep them float instead
        r += [{"regex": ".*", "operation": op, "algorithm_key": "no_quantize", "op_config": {}}
              for op in ("INPUT", "OUTPUT")]
    return r


def _aeq_quantize(fp32: bytes, recipe_name: str, batches: list[np.ndarray] | None, input_name: str = "image",
                  int8_io: bool = False) -> bytes:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(bytearray(fp32), _aeq_recipe(recipe_name, int8_io))
    with _quiet():
        result = None
        if q.need_calibration:
            result = _aeq_calibrate(q, fp32, {SIGNATURE: [{input_name: b} for b in batches]})
        out = q.quantize(result, enable_progress_report=False)
    return bytes(out.quantized_model)


def _aeq_calibrate(q, fp32: bytes, data: dict) -> dict:
    """Calibrate with the true min/max over all samples. Quantizer.calibrate keeps a moving average (0.95) of each
    sample's min/max: with one crop per sample that lands near a typical crop's range, well inside the real one, and
    clips (measured: stem and depthwise outputs calibrated to ~65% of their range, 18 dB SQNR on a trained net).
    ai-edge-quantizer 0.10 offers min_max_update but no argument for it in Quantizer.calibrate, so the Calibrator is
    driven directly with the quantizer's own recipe manager."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    calib = calibrator.Calibrator(bytes(fp32), num_threads=min(4, os.cpu_count() or 1),
                                  qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate(data, q._recipe_manager)  # noqa: SLF001 (see docstring)
    return calib.get_model_qsvs()


def _pt2e(module: nn.Module, sample: torch.Tensor, batches: list[np.ndarray]) -> bytes:
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import quantize_pt2e

    q = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    try:
        m = torch.export.export(module, (), {"image": sample}).module()
        m = quantize_pt2e.prepare_pt2e(m, q)
        for b in batches:
            m(image=torch.from_numpy(b))
        m = quantize_pt2e.convert_pt2e(m, fold_quantize=False)
    except Exception as e:
        raise UserError(f"PT2E quantization failed: {_first_line(e)}") from e
    return _convert(m, sample, quant_config.QuantConfig(pt2e_quantizer=q))


def to_tflite(module: nn.Module, sample_input: torch.Tensor, path: str | Path, precision: str = "fp32",
              calib: Iterable | None = None, int8_io: bool = False, nhwc: bool = True, *,
              quantizer: str = "aeq", recipe: str = "static_wi8_ai8", output_name: str = "heatmaps") -> Path:
    """Convert `module` (eval mode, NCHW input like `sample_input`) to a .tflite at `path` (atomic) and return it.

    The signature is `serving_default` with input `image` and output `output_name`.
    precision: fp32 | fp16 (fp16 weights) | int8 (static: int8 per-channel weights + int8 activations, or int16
    activations with recipe="static_wi8_ai16"; `calib` = NCHW batches) | int8-dynamic (int8 weights, float
    activations). int8_io: int8 input/output tensors (scale/zero point: `io_details`), else float I/O.
    nhwc: the .tflite's 4-D input and output are channels-last. quantizer: "aeq" (ai-edge-quantizer) or "pt2e".
    """
    _check(precision, int8_io, quantizer, recipe)
    batches = _calib_batches(calib, nhwc, "int8") if precision == "int8" else None
    module = _IO(module.eval(), nhwc, output_name).eval()
    sample = _nhwc(sample_input.detach().float(), nhwc)
    with torch.no_grad():
        if precision == "int8" and quantizer == "pt2e":
            model = _pt2e(module, sample, batches)
        else:
            model = _quantize(_convert(module, sample), precision, batches, recipe, int8_io)
    return _write(model, path)


def quantize_tflite(fp32: str | Path | bytes, path: str | Path, precision: str, calib: Iterable | None = None,
                    int8_io: bool = False, nhwc: bool = True, recipe: str = "static_wi8_ai8") -> Path:
    """Quantize an fp32 .tflite written by `to_tflite` (ai-edge-quantizer) without converting again."""
    _check(precision, int8_io, "aeq", recipe)
    batches = _calib_batches(calib, nhwc, "int8") if precision == "int8" else None
    model = fp32 if isinstance(fp32, bytes) else Path(fp32).read_bytes()
    return _write(_quantize(model, precision, batches, recipe, int8_io), path)


def _check(precision, int8_io, quantizer, recipe):
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if int8_io and precision != "int8":
        raise UserError(f"int8_io needs precision int8, got {precision}")
    if quantizer not in ("aeq", "pt2e"):
        raise UserError(f"quantizer {quantizer!r}: expected aeq or pt2e")
    if int8_io and quantizer == "pt2e":
        raise UserError("int8_io is supported with quantizer aeq only")
    if recipe not in STATIC_RECIPES:
        raise UserError(f"recipe {recipe!r}: expected one of {', '.join(STATIC_RECIPES)}")


def _quantize(model: bytes, precision: str, batches, recipe: str, int8_io: bool = False) -> bytes:
    if precision == "fp16":
        return _aeq_quantize(model, "fp16", None)
    if precision == "int8-dynamic":
        return _aeq_quantize(model, "dynamic_wi8_afp32", None)
    if precision == "int8":
        return _aeq_quantize(model, recipe, batches, int8_io=int8_io)
    return model


def _write(model: bytes, path) -> Path:
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


def _ops(path: str | Path):
    """(op_name, [input dtypes], [output dtypes]) of every op in every subgraph, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as s

    buf = Path(path).read_bytes()
    m = s.Model.GetRootAs(buf, 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            oc = m.OperatorCodes(op.OpcodeIndex())
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            ins = [types[sg.Tensors(t).Type()] for t in op.InputsAsNumpy() if t >= 0] if op.InputsLength() else []
            outs = [types[sg.Tensors(t).Type()] for t in op.OutputsAsNumpy() if t >= 0] if op.OutputsLength() else []
            yield names.get(code, f"CUSTOM_{code}"), ins, outs


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
