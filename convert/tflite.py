"""TFLite artifacts through litert-torch (fp32) and ai-edge-quantizer / PT2E (fp16, int8, int8-dynamic).

int8: each candidate quantizer is built and scored by SQNR against the fp32 PyTorch heatmaps on held-out real
crops; the best one that is fully integer with int8 activations ships (static_wi8_ai16 is scored and recorded,
but its int16 activations are not int8: XNNPACK does not run them and most NPUs do not either)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from posekit import litert

CANDIDATES = {"static_wi8_ai8": ("aeq", "static_wi8_ai8"), "static_wi8_ai16": ("aeq", "static_wi8_ai16"),
              "pt2e": ("pt2e", None)}
# PT2E is opt-in (--int8-candidates ... pt2e): it costs a second full conversion, and measured on EfficientPose-A
# it leaves the 22 residual ADDs in float, so the full-integer rule below never ships it.
DEFAULT_CANDIDATES = ("static_wi8_ai8", "static_wi8_ai16")


def quantizer_name(quantizer: str, recipe: str | None) -> str:
    return f"ai-edge-quantizer {recipe}" if quantizer == "aeq" else "litert-torch pt2e"


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    noise = float(np.sum((ref - out) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref**2)) / noise)


def torch_ref(net, batches) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([net(b).permute(0, 2, 3, 1).numpy() for b in batches])


def tflite_out(path, batches) -> np.ndarray:
    it = litert.interpreter(path, threads=2)
    return np.concatenate([litert.run(it, b.permute(0, 2, 3, 1).numpy()) for b in batches])


def io_entries(path: Path, normalization_folded: bool = False) -> tuple[list, list]:
    d = litert.io_details(path)
    ins = [{**x, "layout": "NHWC", "kind": "tensor", "normalization_folded": normalization_folded}
           for x in d["inputs"]]
    outs = [{**x, "layout": "NHWC"} for x in d["outputs"]]
    return ins, outs


def fully_integer(path) -> bool:
    return not litert.float_compute_ops(path)


def int8_activations(path) -> bool:
    return not any(k.endswith(":int16") for k in litert.op_dtypes(path))


def export_int8(net, sample, out: Path, fp32: Path, calib, evals, int8_io: bool, candidates=tuple(CANDIDATES),
                log=print) -> dict:
    """Build each int8 candidate, score it, move the chosen one to `out`; returns the selection record."""
    ref = torch_ref(net, evals)
    scores = []
    for quantizer, recipe in (CANDIDATES[c] for c in candidates):
        if int8_io and quantizer == "pt2e":
            continue
        tmp = out.with_name(f".cand-{quantizer}-{recipe}.tflite")
        try:
            if quantizer == "aeq":
                litert.quantize_tflite(fp32, tmp, "int8", calib, int8_io=int8_io, recipe=recipe)
            else:
                litert.to_tflite(net, sample, tmp, "int8", calib, quantizer="pt2e")
            sq = sqnr_db(ref, tflite_out(tmp, evals))
            s = {"quantizer": quantizer_name(quantizer, recipe), "sqnr_db": round(sq, 2),
                 "fully_integer": fully_integer(tmp), "int8_activations": int8_activations(tmp),
                 "float_ops": litert.float_compute_ops(tmp), "_path": tmp}
        except Exception as e:  # a candidate that fails is recorded, not fatal
            s = {"quantizer": quantizer_name(quantizer, recipe), "error": f"{type(e).__name__}: {e}"[:300]}
        log(f"  int8 candidate {s['quantizer']}: " + (f"SQNR {s['sqnr_db']} dB, fully integer {s['fully_integer']}, "
                                                     f"int8 activations {s['int8_activations']}"
                                                     if "error" not in s else s["error"]))
        scores.append(s)
    integer = [s for s in scores if "error" not in s and s["fully_integer"]]
    # Prefer int8 activations (XNNPACK and most phone NPUs run them); int16 activations only when asked for alone.
    ok = [s for s in integer if s["int8_activations"]] or integer
    if not ok:
        raise RuntimeError("no int8 candidate is fully integer: " + "; ".join(str(s) for s in scores))
    best = max(ok, key=lambda s: s["sqnr_db"])
    best["_path"].replace(out)
    for s in scores:
        p = s.pop("_path", None)
        if p is not None and p.exists():
            p.unlink()
    return {"chosen": best["quantizer"], "metric": f"SQNR vs fp32 PyTorch on {len(evals)} held-out crops",
            "candidates": scores}
