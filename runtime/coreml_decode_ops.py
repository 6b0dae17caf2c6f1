"""The MIL ops of the in-graph keypoint decode (model/decode.py) for the Core ML reference executor
(runtime/coreml_reference.py's MIL_OPS): pad, slice_by_index, sign, equal, reduce_argmax / reduce_max / reduce_sum, with
MIL's semantics (iOS16 opset)."""

from __future__ import annotations

import numpy as np


def _f32(v):
    return np.asarray(v, np.float32)


def _pad(a):
    mode = str(a.get("mode", "constant"))
    if mode != "constant":  # the decode pads with zeros only; the executor reports this as the op's error
        raise ValueError(f"pad mode {mode!r}: only 'constant' is implemented")
    x = np.asarray(a["x"])
    p = [int(v) for v in np.ravel(a["pad"])]
    k = len(p) // 2  # MIL pads the last k axes, [before, after] per axis
    width = [(0, 0)] * (x.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
    return np.pad(x, width, constant_values=float(a.get("constant_val", 0.0)))


def _slice_by_index(a):
    x = np.asarray(a["x"])
    n = x.ndim
    begin = [int(v) for v in np.ravel(a["begin"])]
    end = [int(v) for v in np.ravel(a["end"])]
    stride = [int(v) for v in np.ravel(a.get("stride", [1] * n))]
    bm = [bool(v) for v in np.ravel(a.get("begin_mask", [False] * n))]
    em = [bool(v) for v in np.ravel(a.get("end_mask", [False] * n))]
    sq = [bool(v) for v in np.ravel(a.get("squeeze_mask", [False] * n))]
    idx = tuple(slice(None if bm[i] else begin[i], None if em[i] else end[i], stride[i]) if not sq[i] else begin[i]
                for i in range(n))
    return x[idx]


def _axes(a, key="axes"):
    v = a.get(key)
    return None if v is None else tuple(int(i) for i in np.ravel(v))


def _argmax(a):
    x = _f32(a["x"])
    axis = int(np.ravel(a.get("axis", -1))[0])
    idx = np.argmax(x, axis=axis)  # the first maximum, as TFLite ARG_MAX and ONNX ArgMax
    if bool(a.get("keep_dims", False)):
        idx = np.expand_dims(idx, axis)
    return idx.astype(np.int32)


def _reduce(fn):
    return lambda a: fn(_f32(a["x"]), axis=_axes(a), keepdims=bool(a.get("keep_dims", False)))


DECODE_MIL_OPS = {
    "pad": _pad,
    "slice_by_index": _slice_by_index,
    "sign": lambda a: np.sign(_f32(a["x"])),
    "equal": lambda a: np.asarray(a["x"]) == np.asarray(a["y"]),
    "reduce_argmax": _argmax,
    "reduce_max": _reduce(np.max),
    "reduce_sum": _reduce(np.sum),
}
