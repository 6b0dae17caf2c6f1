"""Quantized .tflite files: ai-edge-quantizer recipes on litert-torch's fp32 bytes, and PT2E.

- "aeq" (default): litert-torch converts fp32 (posekit.export_tflite.tflite_bytes), then ai-edge-quantizer applies a
  recipe
  (static_wi8_ai8, static_wi8_ai16, dynamic_wi8_afp32, fp16 float casting) calibrated on `calib` (real crops:
  quantize/calibration.py) with the true min/max over all samples. Every compute op is quantized, TRANSPOSE_CONV
  included.
- "pt2e": torch.export -> torchao prepare_pt2e/convert_pt2e with litert-torch's PT2EQuantizer, then litert-torch.
Plus the checks the int8 selection applies: fully integer, int8 (not int16) activations."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posekit.errors import UserError
from posekit.export_tflite import SignatureModule, quiet, tflite_bytes, to_nhwc, write_tflite
from posekit.io import first_line
from runtime.tflite import SIGNATURE
from runtime.tflite_flatbuffer import float_compute_ops, op_dtypes

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
STATIC_RECIPES = ("static_wi8_ai8", "static_wi8_ai16")


def _calib_batches(calib: Iterable | None, nhwc: bool, what: str) -> list[np.ndarray]:
    if calib is None:
        raise UserError(f"{what} needs calibration data (calib=<iterable of NCHW input batches>)")
    out = [to_nhwc(torch.as_tensor(b, dtype=torch.float32), nhwc).numpy() for b in calib]
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
    with quiet():
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
        raise UserError(f"PT2E quantization failed: {first_line(e)}") from e
    return tflite_bytes(m, sample, quant_config.QuantConfig(pt2e_quantizer=q))


def ptq_to_tflite(module: nn.Module, sample_input: torch.Tensor, path: str | Path, precision: str = "fp32",
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
    module = SignatureModule(module.eval(), nhwc, output_name).eval()
    sample = to_nhwc(sample_input.detach().float(), nhwc)
    with torch.no_grad():
        if precision == "int8" and quantizer == "pt2e":
            model = _pt2e(module, sample, batches)
        else:
            model = _quantize(tflite_bytes(module, sample), precision, batches, recipe, int8_io)
    return write_tflite(model, path)


def quantize_tflite(fp32: str | Path | bytes, path: str | Path, precision: str, calib: Iterable | None = None,
                    int8_io: bool = False, nhwc: bool = True, recipe: str = "static_wi8_ai8") -> Path:
    """Quantize an fp32 .tflite (posekit.export_tflite.litert_to_tflite) with ai-edge-quantizer, without converting
    again."""
    _check(precision, int8_io, "aeq", recipe)
    batches = _calib_batches(calib, nhwc, "int8") if precision == "int8" else None
    model = fp32 if isinstance(fp32, bytes) else Path(fp32).read_bytes()
    return write_tflite(_quantize(model, precision, batches, recipe, int8_io), path)


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


def fully_integer(path) -> bool:
    """No compute op left in float (runtime.tflite_flatbuffer.COMPUTE_OPS)."""
    return not float_compute_ops(path)


def int8_activations(path) -> bool:
    """Activations in int8, not int16 (XNNPACK and most phone NPUs run only the former)."""
    return not any(k.endswith(":int16") for k in op_dtypes(path))
