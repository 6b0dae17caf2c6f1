"""Heatmap targets and decoding, with one coordinate convention shared by data, training and every runtime.

Convention (pixel centres): input pixel i has its centre at coordinate i; heatmap pixel j covers input pixels
[4j, 4j+3], so its centre is input coordinate 4j + 1.5. Hence ``hm = (x + 0.5) / 4 - 0.5``. With this convention a
horizontal flip of the input (x -> W-1-x) is exactly a flip of the heatmap (j -> w-1-j): `flip_back` needs no
one-pixel shift (the shift SimpleBaseline/HRNet add to compensate a biased convention).
"""

from __future__ import annotations

import numpy as np

STRIDE = 4
SIGMA = 2.0  # Gaussian sigma in heatmap pixels at 64x48 (256x192 input: SimpleBaseline, HRNet, EfficientPose)


def sigma_for(heatmap_size) -> float:
    """The target sigma for a heatmap size, scaled with its height as the published configs do (SimpleBaseline and
    HRNet: sigma 2 at 64x48, 3 at 96x72), so a peak spans the same share of the person at every resolution; at least
    1 pixel. A fixed sigma 2 at 32x24 (128x96 input) makes peaks twice as wide relative to the person: the top cells
    nearly tie and the argmax flips under the smallest perturbation (int8 rounding)."""
    return max(1.0, SIGMA * heatmap_size[0] / 64)


def input_to_heatmap(xy, stride: int = STRIDE):
    """Input-pixel coordinates -> heatmap-pixel coordinates (arrays of any shape, last dim x/y)."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) / stride - 0.5


def heatmap_to_input(xy, stride: int = STRIDE):
    return (np.asarray(xy, dtype=np.float64) + 0.5) * stride - 0.5


def encode(joints, visible, heatmap_size, sigma: float = SIGMA, stride: int = STRIDE):
    """Gaussian targets for one person.

    joints (J, 2) in input pixels, visible (J,) bool/0-1 -> (heatmaps float32 (J, h, w), weights float32 (J, 1)).
    The Gaussian is centred at the sub-pixel joint position (no rounding, so decode(encode(x)) is within a quarter
    pixel); a joint that is unlabelled or whose Gaussian lies wholly outside the map gets weight 0 (Eq. 7's v_j).
    """
    h, w = heatmap_size
    J = len(joints)
    mu = input_to_heatmap(joints, stride)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    hm = np.zeros((J, h, w), np.float32)
    wt = np.zeros((J, 1), np.float32)
    r = 3 * sigma
    for j in range(J):
        mx, my = mu[j]
        if not visible[j] or mx < -r or my < -r or mx > w - 1 + r or my > h - 1 + r:
            continue
        hm[j] = np.exp(-((xs - mx) ** 2 + (ys - my) ** 2) / (2 * sigma**2))
        wt[j] = 1.0
    return hm, wt


def decode(heatmaps):
    """Argmax decoding with the quarter-pixel shift toward the higher neighbour.

    heatmaps np (N, J, h, w) -> (coords float32 (N, J, 2) x/y in heatmap pixels, maxvals float32 (N, J, 1)).
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    n, j, h, w = hm.shape
    flat = hm.reshape(n, j, -1)
    idx = flat.argmax(-1)
    maxvals = np.take_along_axis(flat, idx[..., None], -1)
    coords = np.stack([idx % w, idx // w], -1).astype(np.float32)
    px, py = coords[..., 0].astype(int), coords[..., 1].astype(int)
    ni, ji = np.meshgrid(np.arange(n), np.arange(j), indexing="ij")
    inner_x = (px > 0) & (px < w - 1)
    inner_y = (py > 0) & (py < h - 1)
    dx = hm[ni, ji, py, np.minimum(px + 1, w - 1)] - hm[ni, ji, py, np.maximum(px - 1, 0)]
    dy = hm[ni, ji, np.minimum(py + 1, h - 1), px] - hm[ni, ji, np.maximum(py - 1, 0), px]
    coords[..., 0] += np.where(inner_x, np.sign(dx) * 0.25, 0)
    coords[..., 1] += np.where(inner_y, np.sign(dy) * 0.25, 0)
    return coords, maxvals.astype(np.float32)


def joints_mse(pred, target, weight):
    """The heatmap loss of training and search: SimpleBaseline's JointsMSELoss (EfficientPose Eq. 7), 0.5 x the mean
    squared error over the labelled joints. pred/target tensors (N, J, h, w), weight (N, J, 1) of 0/1."""
    return 0.5 * ((pred - target) ** 2 * weight[..., None]).mean()


def flip_back(heatmaps, flip_pairs):
    """Heatmaps predicted on a horizontally flipped input -> heatmaps of the original input (N, J, h, w)."""
    out = np.asarray(heatmaps)[..., ::-1].copy()
    for a, b in flip_pairs:
        out[:, [a, b]] = out[:, [b, a]]
    return out
