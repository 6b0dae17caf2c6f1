"""Agreement of one runtime's heatmaps with the reference's, and the threshold check.

Numeric: max|d|, mean|d|, max|d| relative to the reference's range, cosine similarity, SQNR (dB).
Keypoints: argmax agreement (same heatmap cell; within one cell), PCK of the decoded keypoints (posekit.heatmap
decoding, sub-pixel) against the reference's, and the AP drop against the reference (from posekit.evaluate).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from posekit import yaml_file
from posekit.errors import UserError
from posekit.io import require_file

THRESHOLDS = Path(__file__).with_name("thresholds.yaml")
METRICS = ("max_abs", "mean_abs", "max_abs_rel", "cosine", "sqnr_db", "argmax_same", "argmax_within1",
           "argmax_same_detected", "pck", "kp_dist_px", "dap", "oks_agreement",
           "fidelity_sqnr_db", "fidelity_in_step", "fidelity_op_sqnr_db", "fidelity_op_in_step",
           "fidelity_graph_sqnr_db", "weights_exact",
           # decoded files' in-file keypoints (parity/keypoints.py)
           "kp_decode_max_px", "kp_cell_same", "kp_within_px", "kp_oks_agreement")
# Static int8: end to end against the XNNPACK-exact twin; a file without one (another quantizer's graph, int8 I/O)
# is judged per op only (fidelity_op_*), and these rules are reported as not applicable to it, with the reason.
END_TO_END_FIDELITY = ("fidelity_sqnr_db", "fidelity_in_step")
# Rules on these judge keypoints against PyTorch's: not applicable when the reference is untrained (its keypoints
# are noise, not a truth); the numeric and conversion-fidelity rules gate regardless.
KEYPOINT_METRICS = ("argmax_same", "argmax_within1", "argmax_same_detected", "pck", "kp_dist_px", "dap",
                    "oks_agreement", "kp_cell_same", "kp_within_px", "kp_oks_agreement")
FIDELITY_PREFIX = "conversion fidelity: "  # failed fidelity rules say so: a converter error, not quantization cost
DETECTED = 0.2  # a joint is "detected" when its heatmap peak reaches this (SimpleBaseline / HRNet in_vis_thre)


HIST_EDGES = np.concatenate([[0.0], np.logspace(-12, 3, 76)])  # |d| histogram bins, fixed so batches add up


class Agreement:
    """Streaming agreement of a runtime's heatmaps with the reference's, batch by batch (a full COCO val run does
    not fit in memory): max|d|, mean|d|, max|d| / range, cosine, SQNR, argmax agreement, PCK, |d| histogram.

    PCK: a keypoint agrees when the runtime's decoded position (posekit.heatmap.decode, sub-pixel) lies within
    pck_alpha x the crop's longer side of the reference's (0.05 x 256 = 12.8 input pixels at 256x192).

    argmax_same_detected: argmax agreement over the joints that the reference or the runtime detects (peak >=
    DETECTED). Joints absent from the crop give flat, low heatmaps whose argmax is noise and is never drawn;
    a runtime that invents a peak still counts, since its own peak then passes the bar."""

    def __init__(self, stride: int = 4, pck_alpha: float = 0.05):
        self.stride, self.alpha = stride, pck_alpha
        self.n = self.kp = 0
        self.max_abs = self.sum_abs = self.sum_d2 = self.sum_r2 = self.sum_o2 = self.sum_ro = 0.0
        self.lo, self.hi = np.inf, -np.inf
        self.same = self.within1 = self.pck_hits = self.dist = 0.0
        self.det = self.det_same = 0
        self.hist = np.zeros(len(HIST_EDGES) - 1, np.int64)

    def update(self, ref: np.ndarray, out: np.ndarray):
        from posekit.heatmap import decode

        ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
        if ref.shape != out.shape:
            raise UserError(f"heatmaps of shape {out.shape} do not match the reference's {ref.shape}")
        d = out - ref
        a = np.abs(d)
        self.n += d.size
        self.max_abs = max(self.max_abs, float(a.max()))
        self.sum_abs += float(a.sum())
        self.sum_d2 += float((d**2).sum())
        self.sum_r2 += float((ref**2).sum())
        self.sum_o2 += float((out**2).sum())
        self.sum_ro += float((ref * out).sum())
        self.lo, self.hi = min(self.lo, float(ref.min())), max(self.hi, float(ref.max()))
        self.hist += np.histogram(np.clip(a.ravel(), 0, HIST_EDGES[-1]), HIST_EDGES)[0]
        cheb = np.abs(argmax_cells(ref) - argmax_cells(out)).max(-1)
        dist = np.linalg.norm(decode(ref)[0] - decode(out)[0], axis=-1) * self.stride
        self.kp += cheb.size
        self.same += float((cheb == 0).sum())
        self.within1 += float((cheb <= 1).sum())
        det = (ref.max((2, 3)) >= DETECTED) | (out.max((2, 3)) >= DETECTED)
        self.det += int(det.sum())
        self.det_same += int((det & (cheb == 0)).sum())
        self.pck_hits += float((dist <= self.alpha * max(ref.shape[2:]) * self.stride).sum())
        self.dist += float(dist.sum())

    def result(self) -> dict:
        rng = (self.hi - self.lo) or 1.0
        return {"max_abs": self.max_abs, "mean_abs": self.sum_abs / self.n, "range": rng,
                "max_abs_rel": self.max_abs / rng,
                "cosine": self.sum_ro / (np.sqrt(self.sum_r2 * self.sum_o2) + 1e-30),
                "sqnr_db": 10 * np.log10(self.sum_r2 / self.sum_d2) if self.sum_d2 > 0 else float("inf"),
                "argmax_same": self.same / self.kp, "argmax_within1": self.within1 / self.kp,
                "argmax_same_detected": self.det_same / self.det if self.det else float("nan"),
                "detected": self.det,
                "pck": self.pck_hits / self.kp, "kp_dist_px": self.dist / self.kp}


def argmax_cells(hm: np.ndarray) -> np.ndarray:
    """(N, J, 2) integer x/y of each heatmap's maximum."""
    n, j, h, w = hm.shape
    idx = hm.reshape(n, j, -1).argmax(-1)
    return np.stack([idx % w, idx // w], -1)


# ---------------------------------------------------------------------------------------------------- thresholds
_RULE = re.compile(r"^\s*(<=|>=)\s*([-+0-9.eE]+|inf)\s*$")


def load_thresholds(path: str | Path | None = None) -> dict:
    """{precision: {metric: (op, value)}} from the YAML file (default parity/thresholds.yaml)."""
    path = require_file(path or THRESHOLDS, "thresholds file")
    raw = yaml_file.load(path) or {}  # the one YAML reader (bounded)
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


def check(row: dict, rules: dict, keypoints_na: str | None = None) -> tuple[list[str], list[str]]:
    """(failed rules, rules not applicable) of one artifact row, e.g. (['sqnr_db 21.3 < 40'], []); a missing metric
    fails too. keypoints_na: why the keypoint rules do not apply (an untrained reference), or None."""
    fails, na = [], []
    for metric, (op, v) in rules.items():
        x = row.get(metric)
        if keypoints_na and metric in KEYPOINT_METRICS:
            na.append(f"{metric} {op} {v:g}: not applicable ({keypoints_na})")
            continue
        tag = FIDELITY_PREFIX if metric.startswith("fidelity_") or metric == "weights_exact" else ""
        if x is None or (isinstance(x, float) and np.isnan(x)):
            why = f" ({row['fidelity_note']})" if tag and row.get("fidelity_note") else ""
            fails.append(f"{tag}{metric} not measured (rule {op} {v:g}){why}")
        elif (op == "<=" and not x <= v) or (op == ">=" and not x >= v):
            fails.append(f"{tag}{metric} {x:.4g} {'>' if op == '<=' else '<'} {v:g}")
    return fails, na
