"""Parity of decoded files (issue 28): the in-file `keypoints` (x, y, score in input-crop pixels) on every crop,
against (a) the Python decode (posekit.heatmap) of the file's own heatmaps, which they must equal: the decode in the
graph is exact, and a wrong stride or a missing quarter shift shows here whatever the network; (b) PyTorch's
keypoints (its heatmaps decoded in Python) on the joints PyTorch is confident of (peak >= metrics.DETECTED): the
same arg-max cell, the same position within POS_TOL px, and the OKS-agreement of the crop's keypoints."""

from __future__ import annotations

import numpy as np

from posekit.heatmap import STRIDE, decode, heatmap_to_input, input_to_heatmap

from .metrics import DETECTED

POS_TOL = 0.05  # px: "the same position" (positions are multiples of stride/4 px: 1 px apart at stride 4)
# rules per metric (thresholds.yaml `keypoints-<precision>` names them)
METRICS = ("kp_decode_max_px", "kp_cell_same", "kp_within_px", "kp_oks_agreement")


def python_keypoints(heatmaps: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """heatmaps (N, J, h, w) -> keypoints (N, J, 3) in input pixels by posekit.heatmap's rule."""
    c, v = decode(heatmaps)
    return np.concatenate([heatmap_to_input(c, stride), v], -1).astype(np.float32)


def cells(kp: np.ndarray, w: int, stride: int = STRIDE) -> np.ndarray:
    """The flat heatmap cell of each keypoint (input pixels back to the heatmap; the quarter shift rounds away)."""
    c = np.rint(input_to_heatmap(kp[..., :2], stride)).astype(np.int64)
    return c[..., 1] * w + c[..., 0]


def compare(file_kp: np.ndarray, file_hm: np.ndarray, ref_hm: np.ndarray, input_size, stride: int = STRIDE) -> dict:
    """The keypoint figures of one decoded file over the same crops (all arrays in crop order, heatmaps NCHW)."""
    from posekit.evaluate import oks_agreement

    own = python_keypoints(file_hm, stride)
    ref = python_keypoints(ref_hm, stride)
    w = ref_hm.shape[-1]
    confident = ref[..., 2] >= DETECTED
    dist = np.abs(file_kp[..., :2] - ref[..., :2]).max(-1)
    h, wi = input_size
    oks = oks_agreement(ref[..., :2], file_kp[..., :2], np.full(len(ref), float(h * wi)))
    n = int(confident.sum())
    return {
        "kp_decode_max_px": float(np.abs(file_kp[..., :2] - own[..., :2]).max()),
        "kp_score_max_abs": float(np.abs(file_kp[..., 2] - own[..., 2]).max()),
        "kp_confident_joints": n,
        "kp_cell_same": float((cells(file_kp, w, stride) == cells(ref, w, stride))[confident].mean()) if n else
        float("nan"),
        "kp_within_px": float((dist <= POS_TOL)[confident].mean()) if n else float("nan"),
        "kp_oks_agreement": float(np.nanmean(oks)),
    }


class Recorder:
    """Wraps a runtime.decoded.KeypointRunner: runner(x) -> heatmaps for parity's heatmap comparison, keeping every
    call's heatmaps and in-file keypoints in crop order."""

    def __init__(self, runner):
        self.runner, self.path, self.engine, self.label = runner, runner.path, runner.engine, runner.label
        self.hm, self.kp = [], []

    def __call__(self, x):
        hm, kp = self.runner.both(x)
        self.hm.append(hm)
        self.kp.append(kp)
        return hm

    def figures(self, ref_heatmaps, input_size, stride: int = STRIDE) -> dict:
        hm, kp = np.concatenate(self.hm), np.concatenate(self.kp)
        return compare(kp, hm, np.asarray(ref_heatmaps[:len(hm)]), input_size, stride)
