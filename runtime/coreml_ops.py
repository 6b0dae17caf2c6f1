"""The Core ML reference executor's shared kernels: convolution, transposed convolution, batch norm, depth/pixel
shuffles and n-bit unpacking, in the semantics both halves need (runtime.coreml_reference for ML Programs,
runtime.coreml_nn for NeuralNetwork models). Kept apart so neither half imports the other at load time."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from posekit.errors import UserError


class UnsupportedOp(UserError):
    """The model holds an op (or an op variant) the reference executor cannot run."""


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool = False, msb_first: bool = False):
    """Unpack `count` n-bit integers from bytes. MIL packs from each byte's least significant bit up (MIL blob
    format); NeuralNetwork raw weights pack most significant bit first (`msb_first`)."""
    bits = np.unpackbits(np.asarray(packed, np.uint8).ravel(), bitorder="big" if msb_first else "little")
    bits = bits[: count * nbits].reshape(count, nbits).astype(np.int32)
    w = 2 ** (np.arange(nbits)[::-1] if msb_first else np.arange(nbits))
    v = bits @ w
    if signed:
        v = np.where(v >= 2 ** (nbits - 1), v - 2**nbits, v)
    return v.astype(np.int8 if signed else np.uint8)


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _same_pads(size, k, s, d, lower=False):
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    a = (total + 1) // 2 if lower else total // 2
    return a, total - a


def _pair(a, key) -> list[int]:
    """A conv's `strides` / `dilations` argument ([1, 1] when absent)."""
    return [1, 1] if a.get(key) is None else [int(v) for v in a[key]]


def _given_pads(a):
    """(top, bottom, left, right) of a conv's `custom` / `valid` pad_type; None for `same*` (worked out per op)."""
    kind = a.get("pad_type", "valid")
    if kind == "custom":
        return tuple(int(p) for p in a["pad"])
    return (0, 0, 0, 0) if kind == "valid" else None


def _conv_pads(a, x, w):
    kind, strides, dil = a.get("pad_type", "valid"), _pair(a, "strides"), _pair(a, "dilations")
    if (given := _given_pads(a)) is not None:
        t, b, l, r = given
    elif kind in ("same", "same_lower"):
        t, b = _same_pads(x.shape[2], w.shape[2], strides[0], dil[0], kind == "same_lower")
        l, r = _same_pads(x.shape[3], w.shape[3], strides[1], dil[1], kind == "same_lower")
    else:
        raise UnsupportedOp(f"conv pad_type {kind!r}")
    return (t, b, l, r), strides, dil


def op_conv(a):
    x, w = _t(a["x"]), _t(a["weight"])
    if x.ndim != 4:
        raise UnsupportedOp(f"conv on a rank-{x.ndim} input (only 2-D convs)")
    (t, b, l, r), s, d = _conv_pads(a, x, w)
    bias = None if a.get("bias") is None else _t(a["bias"])
    y = F.conv2d(F.pad(x, (l, r, t, b)), w, bias, s, 0, d, int(a.get("groups", 1)))
    return y.numpy()


def op_conv_transpose(a):
    x, w = _t(a["x"]), _t(a["weight"])  # weight (C_in, C_out / groups, kH, kW), as in torch
    s, d = _pair(a, "strides"), _pair(a, "dilations")
    groups = int(a.get("groups", 1))
    full = F.conv_transpose2d(x, w, None, s, 0, 0, groups, d)  # uncropped output, cropped below
    kind = a.get("pad_type", "valid")
    if (given := _given_pads(a)) is not None:
        t, b, l, r = given
    elif kind in ("same", "same_lower"):  # output = input * stride, the extra cropped evenly
        th, tw = full.shape[2] - x.shape[2] * s[0], full.shape[3] - x.shape[3] * s[1]
        t, l = ((th + 1) // 2, (tw + 1) // 2) if kind == "same_lower" else (th // 2, tw // 2)
        b, r = th - t, tw - l
    else:
        raise UnsupportedOp(f"conv_transpose pad_type {kind!r}")
    oh, ow = full.shape[2] - t - b, full.shape[3] - l - r
    if a.get("output_shape") is not None:
        oh, ow = (int(v) for v in list(a["output_shape"])[-2:])
    full = F.pad(full, (0, max(0, l + ow - full.shape[3]), 0, max(0, t + oh - full.shape[2])))
    y = full[:, :, t:t + oh, l:l + ow]
    if a.get("bias") is not None:
        y = y + _t(a["bias"]).view(1, -1, 1, 1)
    return y.numpy()


def op_batch_norm(a):
    x = a["x"].astype(np.float32)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = 1.0 / np.sqrt(a["variance"].astype(np.float32) + np.float32(a.get("epsilon", 1e-5)))
    g = np.ones_like(inv) if a.get("gamma") is None else a["gamma"].astype(np.float32)
    be = np.zeros_like(inv) if a.get("beta") is None else a["beta"].astype(np.float32)
    return (x - a["mean"].astype(np.float32).reshape(shape)) * (g * inv).reshape(shape) + be.reshape(shape)


def op_depth_to_space(a):  # DCR order (TF): channel = (i * b + j) * C + c
    x, b = a["x"], int(a["block_size"])
    n, c, h, w = x.shape
    return x.reshape(n, b, b, c // b**2, h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, c // b**2, h * b, w * b)


def op_pixel_shuffle(a):  # CRD order (torch): channel = c * b * b + i * b + j
    return F.pixel_shuffle(torch.from_numpy(np.ascontiguousarray(a["x"])), int(a["upscale_factor"])).numpy()


def op_max_pool(a):
    x = _t(a["x"])
    if x.ndim != 4:
        raise UnsupportedOp(f"max_pool on a rank-{x.ndim} input (only 2-D pooling)")
    k, s = [int(v) for v in a["kernel_sizes"]], _pair(a, "strides")
    kind = a.get("pad_type", "valid")
    if (given := _given_pads(a)) is not None:
        t, b, l, r = given
    elif kind in ("same", "same_lower"):
        t, b = _same_pads(x.shape[2], k[0], s[0], 1, kind == "same_lower")
        l, r = _same_pads(x.shape[3], k[1], s[1], 1, kind == "same_lower")
    else:
        raise UnsupportedOp(f"max_pool pad_type {kind!r}")
    x = F.pad(x, (l, r, t, b), value=float("-inf"))  # padding never wins a max
    return F.max_pool2d(x, k, s, 0, ceil_mode=bool(a.get("ceil_mode", False))).numpy()


def op_upsample_nearest_neighbor(a):  # MIL: output pixel i reads input pixel floor(i / scale)
    x = np.asarray(a["x"])
    sh, sw = float(a.get("scale_factor_height", 1)), float(a.get("scale_factor_width", 1))
    h, w = x.shape[-2:]
    rows = np.minimum(np.floor(np.arange(int(h * sh)) / sh).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(int(w * sw)) / sw).astype(int), w - 1)
    return x[..., rows, :][..., cols]
