"""The full-integer int8 .tflite of a decoded net (model/decode.py): ai-edge-quantizer's static_wi8_ai8 recipe on
the decoded fp32 file, calibrated on the same real crops and with the same global min/max as convert's int8, with
the decode's ops excluded by the recipe (`no_quantize` on their tensors): the network stays int8 up to the heatmaps
(arg-max over int8 values is exact: dequantizing is monotonic), a DEQUANTIZE hands the heatmaps to the float decode
tail, whose coordinates are exact multiples of 1/8 px (int8 coordinates would not be)."""

from __future__ import annotations

from pathlib import Path

from posekit.errors import UserError
from posekit.export_tflite import SIGNATURE, quiet, write_tflite
from runtime.tflite_flatbuffer import COMPUTE_OPS, split_ops

from . import tflite as qtflite

RECIPE = "static_wi8_ai8"
# litert-torch names a tensor after the module path that made it; the decode's are `...KeypointDecode_<attr>;<n>`,
# the network's `...KeypointDecode_<attr>/model.net.PoseNet_<attr>/...`; the graph output is the signature's
DECODE_TENSORS = r".*model\.decode\.KeypointDecode_[A-Za-z_]+;.*|serving_default_keypoints.*"


def quantize_decoded(fp32: str | Path, path: str | Path, calib) -> tuple[Path, dict]:
    """int8 file of the decoded fp32 .tflite at `path`; returns (path, {'OP:dtype': n} of the float decode tail)."""
    from ai_edge_quantizer import quantizer

    data = Path(fp32).read_bytes()
    batches = qtflite._calib_batches(calib, True, "int8")  # noqa: SLF001 (the int8 calibration, as convert's int8)
    recipe = qtflite._aeq_recipe(RECIPE, int8_io=False) + [  # noqa: SLF001
        {"regex": DECODE_TENSORS, "operation": "*", "algorithm_key": "no_quantize", "op_config": {}}]
    q = quantizer.Quantizer(bytearray(data), recipe)
    with quiet():
        qsv = qtflite._aeq_calibrate(q, data, {SIGNATURE: [{"image": b} for b in batches]})  # noqa: SLF001
        model = bytes(q.quantize(qsv, enable_progress_report=False).quantized_model)
    write_tflite(model, path)
    net, tail = split_ops(path)
    floating = sorted(k for k in net if k.split(":")[0] in COMPUTE_OPS and k.split(":")[1].startswith("float"))
    if floating:
        Path(path).unlink()
        raise UserError(f"{path}: the network part is not fully integer ({', '.join(floating)})")
    return Path(path), dict(sorted(tail.items()))
