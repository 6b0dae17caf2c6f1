"""int8 candidates, their scores and the selection of the one that ships.

Each candidate quantizer is built from the same fp32 model and the same calibration crops and scored against the
float PyTorch model on held-out real crops (quantize/calibration.py) by keypoint metrics: the mean OKS-agreement of
the decoded keypoints (posekit.evaluate.oks_agreement, PyTorch's keypoints taken as the truth), then SQNR of the
heatmaps as tie-break and diagnostic. The best one that is fully integer with int8 activations ships
(static_wi8_ai16 is scored and recorded, but its int16 activations are not int8: XNNPACK does not run them and most
NPUs do not either)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from runtime import tflite, tflite_flatbuffer

from . import tflite as qtflite

# name -> (quantizer, recipe). "tf": the TensorFlow path (quantize/tf.py, the optional `tf` extra). PT2E is opt-in
# (--int8-candidates ... pt2e): it costs a second full conversion, and
# measured on EfficientPose-A it leaves the 22 residual ADDs in float, so the full-integer rule never ships it.
CANDIDATES = {"static_wi8_ai8": ("aeq", "static_wi8_ai8"), "static_wi8_ai16": ("aeq", "static_wi8_ai16"),
              "pt2e": ("pt2e", None), "tf": ("tf", None)}
DEFAULT_CANDIDATES = ("static_wi8_ai8", "static_wi8_ai16")
# Two candidates whose mean OKS-agreement differs by less than this are tied; SQNR decides between them.
OKS_TIE = 0.005
METRIC = "mean OKS-agreement of decoded keypoints vs fp32 PyTorch (ties within {tie}: SQNR) on {n} held-out crops"


def quantizer_name(quantizer: str, recipe: str | None) -> str:
    from .tf import NAME

    return {"aeq": f"ai-edge-quantizer {recipe}", "pt2e": "litert-torch pt2e", "tf": NAME["int8"]}.get(quantizer,
                                                                                                      quantizer)


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    noise = float(np.sum((ref - out) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref**2)) / noise)


def torch_ref(net, batches) -> np.ndarray:
    """The float model's heatmaps, NHWC (the .tflite layout)."""
    with torch.no_grad():
        return np.concatenate([net(b).permute(0, 2, 3, 1).numpy() for b in batches])


def tflite_out(path, batches) -> np.ndarray:
    it = tflite.interpreter(path, threads=2)
    return np.concatenate([tflite.run(it, b.permute(0, 2, 3, 1).numpy()) for b in batches])


def heatmaps_oks_agreement(ref_nhwc: np.ndarray, out_nhwc: np.ndarray, input_size) -> float:
    """posekit.evaluate.mean_oks_agreement of the candidate's decoded keypoints against the float model's, each
    crop taken as one person whose area is the crop's (in input pixels) and every joint counted."""
    from posekit.evaluate import mean_oks_agreement
    from posekit.heatmap import STRIDE, decode

    r, _ = decode(np.transpose(ref_nhwc, (0, 3, 1, 2)))
    p, _ = decode(np.transpose(out_nhwc, (0, 3, 1, 2)))
    h, w = input_size
    area = np.full(len(r), float(h * w))
    return mean_oks_agreement(r * STRIDE, p * STRIDE, area)


def score(ref_nhwc: np.ndarray, out_nhwc: np.ndarray, input_size) -> dict:
    """{'oks_agreement', 'sqnr_db'} of one candidate's heatmaps against the float model's."""
    return {"oks_agreement": round(heatmaps_oks_agreement(ref_nhwc, out_nhwc, input_size), 4),
            "sqnr_db": round(sqnr_db(ref_nhwc, out_nhwc), 2)}


def choose(scores: list[dict]) -> dict:
    """The candidate that ships: among the fully-integer ones (int8 activations preferred; int16 only when nothing
    else is fully integer), the highest OKS-agreement, ties (within OKS_TIE) broken by SQNR."""
    integer = [s for s in scores if "error" not in s and s["fully_integer"]]
    ok = [s for s in integer if s["int8_activations"]] or integer
    if not ok:
        raise RuntimeError("no int8 candidate is fully integer: " + "; ".join(
            f"{s['quantizer']}: {s.get('error') or s.get('float_ops')}" for s in scores))
    top = max(s["oks_agreement"] for s in ok)
    return max((s for s in ok if s["oks_agreement"] >= top - OKS_TIE), key=lambda s: s["sqnr_db"])


def candidate(name: str, net, sample, fp32: Path, calib, tmp: Path, int8_io: bool, arch=None) -> Path:
    """Build one named candidate at `tmp` (an ai-edge-quantizer recipe on the fp32 bytes, PT2E, or the TensorFlow
    path, which needs the arch)."""
    quantizer, recipe = CANDIDATES[name]
    if quantizer == "tf":
        from . import tf

        return tf.onnx2tf_to_tflite(net, arch, calib, tmp, "int8")
    if quantizer == "aeq":
        return qtflite.quantize_tflite(fp32, tmp, "int8", calib, int8_io=int8_io, recipe=recipe)
    return qtflite.ptq_to_tflite(net, sample, tmp, "int8", calib, quantizer="pt2e")


def export_int8(net, sample, out: Path, fp32: Path, calib, evals, int8_io: bool, candidates=DEFAULT_CANDIDATES,
                log=print, extra: dict[str, Callable[[Path], Path]] | None = None, arch=None) -> dict:
    """Build each int8 candidate, score it, move the chosen one to `out`; returns the selection record.

    extra: more candidates, name -> build(tmp_path) -> path (e.g. the TensorFlow converter's int8 file), scored and
    chosen by the same rule."""
    ref = torch_ref(net, evals)
    input_size = tuple(evals[0].shape[-2:])
    builds = {}
    for c in candidates:
        quantizer, recipe = CANDIDATES[c]
        if int8_io and quantizer in ("pt2e", "tf"):
            continue
        builds[quantizer_name(quantizer, recipe)] = (lambda tmp, c=c: candidate(c, net, sample, fp32, calib, tmp,
                                                                                  int8_io, arch))
    builds.update(extra or {})
    scores = []
    for i, (name, build) in enumerate(builds.items()):
        tmp = out.with_name(f".cand-{i}-{out.name}")
        try:
            build(tmp)
            s = {"quantizer": name, **score(ref, tflite_out(tmp, evals), input_size),
                 "fully_integer": qtflite.fully_integer(tmp), "int8_activations": qtflite.int8_activations(tmp),
                 "float_ops": tflite_flatbuffer.float_compute_ops(tmp), "_path": tmp}
        except Exception as e:  # a candidate that fails is recorded, not fatal
            s = {"quantizer": name, "error": f"{type(e).__name__}: {e}"[:300]}
        log(f"  int8 candidate {s['quantizer']}: " + (
            f"OKS-agreement {s['oks_agreement']}, SQNR {s['sqnr_db']} dB, fully integer {s['fully_integer']}, "
            f"int8 activations {s['int8_activations']}" if "error" not in s else s["error"]))
        scores.append(s)
    try:
        best = choose(scores)
        best["_path"].replace(out)
    finally:
        for s in scores:
            p = s.pop("_path", None)
            if p is not None and p.exists():
                p.unlink()
    return {"chosen": best["quantizer"], "metric": METRIC.format(tie=OKS_TIE, n=len(evals)), "candidates": scores}
