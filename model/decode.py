"""The heatmap decode as part of the graph: a net's heatmaps -> `keypoints` (J, 3) = (x, y, score) in input-crop
pixels, by exactly posekit.heatmap.decode's rule followed by posekit.heatmap.heatmap_to_input:

    arg-max per joint (the first maximum on ties, as numpy, TFLite ARG_MAX and ONNX ArgMax pick it);
    +-0.25 heatmap pixel toward the higher neighbour, per axis, only off the border;
    input = (heatmap + 0.5) * stride - 0.5 (pixel centres, posekit/heatmap.py); score = the heatmap peak.

Built only from ops every target lowers and computes exactly: PAD/SLICE/SUB/SIGN for the neighbour comparison as a
whole map (a border cell gets a zero difference, so sign 0: no shift, the rule's `inner` test), ARG_MAX, EQUAL with
a constant index ramp (a one-hot of the arg-max: no integer divide, no gather), and a multiply + sum picking the
candidate coordinate map at that cell. Every value on the way is a small multiple of 1/8 (exact in fp16 too below
1024 px): the in-graph keypoints equal the Python decode of the same heatmaps bit for bit."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from posekit.heatmap import STRIDE

QUARTER = 0.25  # the shift toward the higher neighbour, in heatmap pixels (posekit.heatmap.decode)


class KeypointDecode(nn.Module):
    """net: image (N, 3, H, W) -> heatmaps (N, J, h, w); this: image -> (heatmaps, keypoints (N, J, 3)).

    stride and shift are parameters only so that a test can build a wrong decode (parity must catch it)."""

    def __init__(self, net: nn.Module, input_size, stride: int = STRIDE, shift: float = QUARTER):
        super().__init__()
        self.net, self.stride, self.shift = net, int(stride), float(shift)
        h, w = (int(v) // STRIDE for v in input_size)
        self.hw = (h, w)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        # the cell grid and the flat index ramp are constants of the graph
        self.register_buffer("gx", xs.reshape(1, 1, h * w), persistent=False)
        self.register_buffer("gy", ys.reshape(1, 1, h * w), persistent=False)
        self.register_buffer("ramp", torch.arange(h * w).reshape(1, 1, h * w), persistent=False)

    def forward(self, x):
        hm = self.net(x)
        return hm, decode_heatmaps(hm, self.gx, self.gy, self.ramp, self.stride, self.shift)


def decode_heatmaps(hm, gx, gy, ramp, stride: int = STRIDE, shift: float = QUARTER):
    """heatmaps (N, J, h, w) -> keypoints (N, J, 3); gx, gy, ramp: (1, 1, h*w) cell x, cell y, flat index."""
    # neighbour differences over the whole map, zero on the border (where the rule does not shift)
    dx = F.pad(hm[:, :, :, 2:] - hm[:, :, :, :-2], (1, 1, 0, 0))
    dy = F.pad(hm[:, :, 2:, :] - hm[:, :, :-2, :], (0, 0, 1, 1))
    cx = ((gx + torch.sign(dx.flatten(2)) * shift) + 0.5) * stride - 0.5
    cy = ((gy + torch.sign(dy.flatten(2)) * shift) + 0.5) * stride - 0.5
    flat = hm.flatten(2)  # flatten, not reshape(n, j, h*w): a traced size would become a Core ML 'int' op
    idx = torch.argmax(flat, dim=-1, keepdim=True)
    onehot = (ramp == idx).to(hm.dtype)
    kx = (onehot * cx).sum(-1, keepdim=True)
    ky = (onehot * cy).sum(-1, keepdim=True)
    score = torch.amax(flat, dim=-1, keepdim=True)
    return torch.cat([kx, ky, score], dim=-1)
