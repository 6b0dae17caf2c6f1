"""Conversion fidelity: is a lossy artifact exactly what its quantization says it is?

The artifact is compared with its twin (runtime.tflite_twin): the PyTorch network run with the artifact's own
quantization (the file's scales, zero points, palettes; TFLite's rounding), so what remains is converter error, not
quantization noise.

- TFLite static int8 made by ai-edge-quantizer from the manifest's fp32 file (convert's int8): the file on XNNPACK
  against its XNNPACK-exact twin (quantize.qat.ptq_twin, the QAT graph with the file's own scales), end to end:
  `fidelity_sqnr_db` and `fidelity_in_step` (fraction of int8 output values within one step; `fidelity_identical`
  the fraction equal). The per-op figures below stay, as `fidelity_op_*`, to name the op where a difference enters.
- Every TFLite int8 / int8-dynamic file (`fidelity_op_*`; for int8-dynamic and for a static int8 file with no exact
  twin, another quantizer's or with int8 I/O, these are its only figures): every op of the file, as TFLite's builtin
  kernels compute it on real crops, against runtime.tflite_twin's twin of the same op fed the runtime's own inputs:
  `fidelity_sqnr_db` (the worst op's; the twin as signal) and `fidelity_in_step` (the worst op's fraction of int8
  values within one quantization step of the twin's). Per op, because the requantization rounding that twin does not
  model (one step on ~0.5% of values) compounds through a deep random network end to end (EfficientPose-A: 27 dB)
  while a converter error shows at its op either way; its end-to-end figures are reported too (`fidelity_e2e_*`).
- Every TFLite row: `fidelity_graph_sqnr_db`, the artifact's graph run with the float PyTorch weights and no
  quantization against PyTorch itself (an op dropped or added by the converter shows here); `weights_exact`, the
  fraction of the file's stored int8 weights the twin's rounding reproduces.
- Core ML int8 weights / palettized: `weights_exact`, the fraction of compressed weights whose decompressed value is
  the twin's (PyTorch weight projected onto the file's palette / rounded with the file's scales).
"""

from __future__ import annotations

import numpy as np

from posekit.errors import UserError

VERSION = 3  # bump when the twin or a fidelity figure changes: cached results are re-measured
METRICS = ("fidelity_sqnr_db", "fidelity_in_step", "fidelity_graph_sqnr_db", "weights_exact")
TFLITE = ("int8", "int8-dynamic")
EXACT_QUANTIZER = "ai-edge-quantizer static_wi8_ai8"  # convert's int8 (and the QAT export's): what ptq_twin models
COREML = ("int8-weights", "palettized-8bit", "palettized-6bit")


def applies(entry: dict) -> bool:
    fmt, prec = entry["format"], entry["precision"]
    return (fmt == "tflite" and prec in TFLITE) or (fmt.startswith("coreml-mlprogram") and prec in COREML)


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(((np.asarray(out, np.float64) - ref) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((np.asarray(ref, np.float64) ** 2).sum()) / noise)


def measure(entry: dict, runner, net, inputs: np.ndarray, fp32=None) -> dict:
    """Fidelity figures of one artifact (normalized NCHW crops `inputs`); {} when no twin applies to it.
    A TFLite row whose figures show a difference also gets 'fidelity_divergence': the first op that differs.
    `fp32`: the manifest's fp32 .tflite (what a static int8 file was quantized from: its XNNPACK-exact twin)."""
    if not applies(entry):
        return {}
    from runtime import tflite_twin

    if entry["format"] == "tflite":
        try:
            out = _tflite(runner, net, inputs)
        except UserError as e:  # e.g. an op the twin does not simulate: the fidelity rules then fail as not measured
            return {"fidelity_note": str(e)}
        if entry["precision"] == "int8":  # static int8: the end-to-end figures are the exact twin's, or none
            out.update(_exact(entry, runner, net, inputs, fp32))
        else:  # int8-dynamic: its per-op figures are its fidelity figures
            out.update(fidelity_sqnr_db=out["fidelity_op_sqnr_db"], fidelity_in_step=out["fidelity_op_in_step"])
        return out
    try:
        chk = tflite_twin.coreml_weight_check(net, runner.path)
    except UserError as e:
        return {"fidelity_note": str(e)}
    out = {"weights_exact": chk["weights_exact"], "fidelity_twin": "runtime.tflite_twin.coreml_weight_check",
           "fidelity_tensors": len(chk["tensors"])}
    if chk["worst"]["agree"] < 1:
        w = chk["worst"]
        out["fidelity_divergence"] = {"tensor": w["tensor"], "torch_module": w.get("module"),
                                      "fraction_off": 1 - w["agree"], "note": w.get("note")}
    return out


def _exact(entry, runner, net, inputs, fp32) -> dict:
    """A static int8 file against its XNNPACK-exact twin (quantize.qat.ptq_twin: the converter's int8 graph in
    PyTorch with the file's own scales and zero points and XNNPACK's requantization), end to end on the runtime
    users run: the conversion-fidelity figures proper. For a file of another quantizer or with int8 / pixel I/O:
    {'fidelity_exact_note': why}, and the file is judged per op only."""
    import torch

    from quantize.qat import ptq_twin, twin_agreement

    if EXACT_QUANTIZER not in (entry.get("quantizer") or ""):
        return {"fidelity_exact_note": f"quantizer {entry.get('quantizer')!r}: the exact twin models "
                                       f"{EXACT_QUANTIZER}'s graph only"}
    if fp32 is None:
        return {"fidelity_exact_note": "no fp32 .tflite in the manifest to match the file's tensors with"}
    inp = runner.inp
    if inp.get("dtype", "float32") != "float32" or inp.get("normalization_folded") or inp.get("kind") == "image" \
            or inp.get("layout") != "NHWC" or runner.out.get("dtype", "float32") != "float32":
        return {"fidelity_exact_note": "int8 or pixel I/O (the twin takes normalized float crops)"}
    x = torch.from_numpy(np.ascontiguousarray(inputs, np.float32))
    try:
        twin = ptq_twin(net, runner.path, fp32, x[:1])
    except UserError as e:
        return {"fidelity_exact_note": str(e)}
    a = twin_agreement(twin, runner.path, [x[i:i + 1] for i in range(len(x))])
    sqnr = float("inf") if a["sqnr_db"] is None else a["sqnr_db"]
    return {"fidelity_sqnr_db": sqnr, "fidelity_in_step": a["within_one_step"], "fidelity_identical": a["identical"],
            "fidelity_twin": "quantize.qat.ptq_twin (XNNPACK-exact, end to end)",
            "fidelity_runtime": "ai_edge_litert XNNPACK"}


def _builtin_outputs(path, x: np.ndarray) -> np.ndarray:
    """The file run by TFLite's builtin (reference) kernels, one crop at a time: the file's semantics. (XNNPACK
    computes int8 static bit-identically; its hybrid int8-dynamic kernels quantize activations differently, which
    the keypoint figures, measured on the XNNPACK runtime users run, account for.)"""
    from runtime.tflite import interpreter

    it = interpreter(path, threads=1, kernels="builtin")
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    out = []
    for k in range(len(x)):
        it.set_tensor(i, np.ascontiguousarray(x[k:k + 1]))
        it.invoke()
        out.append(it.get_tensor(o).copy())
    return np.concatenate(out)


def _tflite(runner, net, inputs) -> dict:
    import torch

    from runtime import tflite_twin

    twin = tflite_twin.tflite_twin(net, runner.path, quantized=True)
    x = runner.prepare(inputs)
    ops = tflite_twin.op_fidelity(twin, x)
    art = runner.finish(_builtin_outputs(runner.path, x))
    e2e = tflite_twin.compare_outputs(art, runner.finish(twin(x).numpy()), twin.output_step)
    graph = runner.finish(tflite_twin.tflite_twin(net, runner.path, quantized=False)(x).numpy())
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(np.ascontiguousarray(inputs, np.float32))).numpy()
    stored = [w["stored_equal"] for w in twin.weights if "stored_equal" in w]
    out = {"fidelity_op_sqnr_db": ops["min_sqnr_db"], "fidelity_op_in_step": ops["min_in_step"],
           "fidelity_worst_op": {k: ops["worst"][k] for k in ("op", "op_name", "torch_module", "sqnr_db", "in_step")},
           "fidelity_e2e_sqnr_db": e2e["sqnr_db"], "fidelity_e2e_in_step": e2e["in_step"],
           "fidelity_graph_sqnr_db": _sqnr(ref, graph), "weights_exact": float(np.mean(stored)) if stored else None,
           "fidelity_crops": int(len(inputs)), "fidelity_twin": "runtime.tflite_twin.tflite_twin (per op)",
           "fidelity_runtime": "ai_edge_litert builtin kernels"}
    for o in ops["ops"]:  # the first op the twin disagrees with: where a converter error enters
        if (o["in_step"] is not None and o["in_step"] < 0.99) or o["sqnr_db"] < 40 or \
                (o["stored_weights_equal"] is not None and o["stored_weights_equal"] < 1):
            out["fidelity_divergence"] = {**o, "fraction_off": 1 - o["in_step"] if o["in_step"] is not None else 0.0}
            break
    return out
