"""Conversion fidelity: is a lossy artifact exactly what its quantization says it is?

The artifact is compared with its twin (quantize.simulate): the PyTorch network run with the artifact's own
quantization (the file's scales, zero points, palettes; TFLite's rounding), so what remains is converter error, not
quantization noise.

- TFLite int8 / int8-dynamic: the artifact's output against the twin's on real crops: `fidelity_sqnr_db` (the twin as
  signal) and, for an int8 output, `fidelity_in_step` (fraction of output values within one quantization step of the
  twin's). `fidelity_graph_sqnr_db`: the artifact's graph run with the float PyTorch weights and no quantization
  against PyTorch itself (an op dropped or added by the converter shows here). `weights_exact`: fraction of the
  file's stored int8 weights the twin's rounding reproduces.
- Core ML int8 weights / palettized: `weights_exact`, the fraction of compressed weights whose decompressed value is
  the twin's (PyTorch weight projected onto the file's palette / rounded with the file's scales).
"""

from __future__ import annotations

import numpy as np

from posekit.errors import UserError

METRICS = ("fidelity_sqnr_db", "fidelity_in_step", "fidelity_graph_sqnr_db", "weights_exact")
TFLITE = ("int8", "int8-dynamic")
COREML = ("int8-weights", "palettized-8bit", "palettized-6bit")


def applies(entry: dict) -> bool:
    fmt, prec = entry["format"], entry["precision"]
    return (fmt == "tflite" and prec in TFLITE) or (fmt.startswith("coreml-mlprogram") and prec in COREML)


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(((np.asarray(out, np.float64) - ref) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((np.asarray(ref, np.float64) ** 2).sum()) / noise)


def measure(entry: dict, runner, net, inputs: np.ndarray) -> dict:
    """Fidelity figures of one artifact (normalized NCHW crops `inputs`); {} when no twin applies to it.
    A TFLite row whose figures show a difference also gets 'fidelity_divergence': the first op that differs."""
    if not applies(entry):
        return {}
    from quantize import simulate

    if entry["format"] == "tflite":
        try:
            return _tflite(runner, net, inputs)
        except UserError as e:  # e.g. an op the twin does not simulate: the fidelity rules then fail as not measured
            return {"fidelity_note": str(e)}
    try:
        chk = simulate.coreml_weight_check(net, runner.path)
    except UserError as e:
        return {"fidelity_note": str(e)}
    out = {"weights_exact": chk["weights_exact"], "fidelity_twin": "quantize.simulate.coreml_weight_check",
           "fidelity_tensors": len(chk["tensors"])}
    if chk["worst"]["agree"] < 1:
        w = chk["worst"]
        out["fidelity_divergence"] = {"tensor": w["tensor"], "torch_module": w.get("module"),
                                      "fraction_off": 1 - w["agree"], "note": w.get("note")}
    return out


def _builtin_outputs(path, x: np.ndarray) -> np.ndarray:
    """The file run by TFLite's builtin (reference) kernels, one crop at a time: the file's semantics. (XNNPACK
    computes int8 static bit-identically; its hybrid int8-dynamic kernels quantize activations differently, which
    the keypoint figures, measured on the XNNPACK runtime users run, account for.)"""
    from posekit.litert import interpreter

    it = interpreter(path, threads=1, xnnpack=False)
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    out = []
    for k in range(len(x)):
        it.set_tensor(i, np.ascontiguousarray(x[k:k + 1]))
        it.invoke()
        out.append(it.get_tensor(o).copy())
    return np.concatenate(out)


def _tflite(runner, net, inputs) -> dict:
    import torch

    from quantize import simulate

    twin = simulate.tflite_twin(net, runner.path, quantized=True)
    x = runner.prepare(inputs)
    art = runner.finish(_builtin_outputs(runner.path, x))  # NCHW float, as every other figure sees it
    res = simulate.compare_outputs(art, runner.finish(twin(x).numpy()), twin.output_step)
    graph = runner.finish(simulate.tflite_twin(net, runner.path, quantized=False)(x).numpy())
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(np.ascontiguousarray(inputs, np.float32))).numpy()
    stored = [w["stored_equal"] for w in twin.weights if "stored_equal" in w]
    out = {"fidelity_sqnr_db": res["sqnr_db"], "fidelity_in_step": res["in_step"],
           "fidelity_max_steps": res["max_steps"], "fidelity_graph_sqnr_db": _sqnr(ref, graph),
           "weights_exact": float(np.mean(stored)) if stored else None,
           "fidelity_crops": int(len(inputs)), "fidelity_twin": "quantize.simulate.tflite_twin",
           "fidelity_runtime": "ai_edge_litert builtin kernels"}
    if (res["in_step"] is not None and res["in_step"] < 1) or res["sqnr_db"] < 60 or \
            (stored and min(stored) < 1):
        try:
            out["fidelity_divergence"] = simulate.first_difference(twin, x[:1]) or \
                {"note": "no single op's int8 output differs by more than one step"}
        except Exception as e:  # a diagnosis aid: never hide the figures themselves
            out["fidelity_divergence"] = {"note": f"could not locate: {type(e).__name__}: {e}"}
    return out
