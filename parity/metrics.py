"""Agreement of one runtime's heatmaps with the reference's, and the threshold check.

Numeric: max|d|, mean|d|, max|d| relative to the reference's range, cosine similarity, SQNR (dB).
Keypoints: argmax agreement (same heatmap cell; within one cell), PCK of the decoded keypoints (posekit.heatmap
decoding, sub-pixel) against the reference's, and the AP drop against the reference (from posekit.evaluate).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from posekit.errors import UserError

THRESHOLDS = Path(__file__).with_name("thresholds.yaml")
METRICS = ("max_abs", "mean_abs", "max_abs_rel", "cosine", "sqnr_db", "argmax_same", "argmax_within1", "pck",
           "kp_dist_px", "dap")


def heatmap_stats(ref: np.ndarray, out: np.ndarray) -> dict:
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.shape != out.shape:
        raise UserError(f"heatmaps of shape {out.shape} do not match the reference's {ref.shape}")
    d = out - ref
    rng = float(ref.max() - ref.min()) or 1.0
    noise, signal = float((d**2).sum()), float((ref**2).sum())
    cos = float((ref * out).sum() / (np.linalg.norm(ref) * np.linalg.norm(out) + 1e-30))
    return {"max_abs": float(np.abs(d).max()), "mean_abs": float(np.abs(d).mean()), "range": rng,
            "max_abs_rel": float(np.abs(d).max()) / rng, "cosine": cos,
            "sqnr_db": 10 * np.log10(signal / noise) if noise > 0 else float("inf")}


def argmax_cells(hm: np.ndarray) -> np.ndarray:
    """(N, J, 2) integer x/y of each heatmap's maximum."""
    n, j, h, w = hm.shape
    idx = hm.reshape(n, j, -1).argmax(-1)
    return np.stack([idx % w, idx // w], -1)


def keypoint_stats(ref: np.ndarray, out: np.ndarray, stride: int = 4, pck_alpha: float = 0.05) -> dict:
    """Argmax agreement and PCK of decoded keypoints between two runtimes on the same crops.

    PCK: a keypoint agrees when the runtime's decoded position lies within pck_alpha x the crop's longer side of
    the reference's (0.05 x 256 = 12.8 input pixels at 256x192)."""
    from posekit.heatmap import decode

    a, b = argmax_cells(ref), argmax_cells(out)
    cheb = np.abs(a - b).max(-1)
    pa, pb = decode(ref)[0], decode(out)[0]
    dist = np.linalg.norm(pa - pb, axis=-1) * stride
    side = max(ref.shape[2:]) * stride
    return {"argmax_same": float((cheb == 0).mean()), "argmax_within1": float((cheb <= 1).mean()),
            "pck": float((dist <= pck_alpha * side).mean()), "kp_dist_px": float(dist.mean())}


# ---------------------------------------------------------------------------------------------------- thresholds
_RULE = re.compile(r"^\s*(<=|>=)\s*([-+0-9.eE]+|inf)\s*$")


def load_thresholds(path: str | Path | None = None) -> dict:
    """{precision: {metric: (op, value)}} from the YAML file (default parity/thresholds.yaml)."""
    path = Path(path or THRESHOLDS)
    if not path.is_file():
        raise UserError(f"{path}: thresholds file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    out = {}
    for prec, rules in raw.items():
        if not isinstance(rules, dict):
            raise UserError(f"{path}: {prec}: expected a mapping of metric: '<= value' / '>= value'")
        out[prec] = {}
        for metric, rule in rules.items():
            m = _RULE.match(str(rule))
            if metric not in METRICS or not m:
                raise UserError(f"{path}: {prec}.{metric}: {rule!r} (metrics: {', '.join(METRICS)}; "
                                f"rules: '<= x' or '>= x')")
            out[prec][metric] = (m[1], float(m[2]))
    return out


def check(row: dict, rules: dict) -> list[str]:
    """Failed rules of one artifact row, e.g. ['sqnr_db 21.3 < 40'] (a missing metric fails too)."""
    fails = []
    for metric, (op, v) in rules.items():
        x = row.get(metric)
        if x is None or (isinstance(x, float) and np.isnan(x)):
            fails.append(f"{metric} not measured (rule {op} {v:g})")
        elif (op == "<=" and not x <= v) or (op == ">=" and not x >= v):
            fails.append(f"{metric} {x:.4g} {'>' if op == '<=' else '<'} {v:g}")
    return fails
