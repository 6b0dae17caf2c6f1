"""The host's TFLite kernel sets (one registry) and the choice of the fastest for a file (issue 27).

A kernel set is a choice of the runtime, made when a file is loaded; the deployed .tflite stays the portable one:

- xnnpack: the XNNPACK delegate on every op it takes (what ai_edge_litert and the phone apps use by default);
- builtin: TFLite's builtin kernels only (no default delegate);
- xnnpack+builtin-dwconv: XNNPACK, except each DEPTHWISE_CONV_2D of more than 25 taps, which runs on the builtin
  kernels. XNNPACK (ai-edge-litert 2.3.0) runs those (7x7, also 6x6) 8-20x slower than the builtin kernels on this
  x86 host (AVX-512 VNNI / AMX), int8 worst (`python -m runtime.dwconv_repro` reproduces it with one op built from
  the schema); on ARM phones XNNPACK's depthwise conv is not known to be slow, so this is never written into a file.

Routing happens in memory at load (`routed_model`): the XNNPACK delegate takes a convolution only when its filter
is a constant, so each such op's filter is passed through a RESHAPE to its own shape; the op is then left to the
builtin kernels while everything around it stays on XNNPACK. Each routed op computes exactly what the builtin kernels
compute for it (tests check bit equality); the cost is one copy of the filter (7*7*C bytes in int8) per op and run,
and XNNPACK partitions split at each routed op.

runtime/tflite_kernel_choice.py times a file under every set that makes a distinct program and names the fastest.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np

XNNPACK, BUILTIN, ROUTED = "xnnpack", "builtin", "xnnpack+builtin-dwconv"
KERNEL_SETS = {
    XNNPACK: "the XNNPACK delegate (ai_edge_litert's default; what phone apps run)",
    BUILTIN: "TFLite's builtin kernels only",
    ROUTED: "XNNPACK, with each >25-tap DEPTHWISE_CONV_2D on the builtin kernels (routed in memory at load)",
}
AUTO = "auto"  # the fastest set for the file, measured (fastest_kernels)
MAX_XNNPACK_TAPS = 25  # XNNPACK's largest unipass depthwise kernel (5x5); more taps take its slow path here


def check_kernels(kernels: str) -> str:
    if kernels not in KERNEL_SETS:
        raise ValueError(f"kernels {kernels!r}: one of {', '.join(KERNEL_SETS)}")
    return kernels


def kernel_set(s: str) -> str:
    """A kernel set name (an argparse type: posekit.cli's typed options)."""
    if s not in KERNEL_SETS:
        raise argparse.ArgumentTypeError(f"unknown kernel set {s!r} (one of {', '.join(KERNEL_SETS)})")
    return s


kernel_set.bad = ["xnnpak", "", "auto"]


def kernel_choice(s: str) -> str:
    """A kernel set name or `auto` (the fastest for the file, measured)."""
    if s != AUTO and s not in KERNEL_SETS:
        raise argparse.ArgumentTypeError(f"unknown kernel set {s!r} (auto or one of {', '.join(KERNEL_SETS)})")
    return s


kernel_choice.bad = ["xnnpak", "", "builtin-dwconv"]


def model_bytes(path_or_bytes) -> bytes:
    """The .tflite bytes of a path or of bytes."""
    return bytes(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()


def routed_model(path_or_bytes, max_taps: int = MAX_XNNPACK_TAPS) -> tuple[bytes, int]:
    """The model's bytes with every DEPTHWISE_CONV_2D of more than `max_taps` taps routed to the builtin kernels
    (module doc), and how many were routed (0: the bytes as given)."""
    from ai_edge_litert import schema_py_generated as s

    from .tflite_flatbuffer import load_model, op_name, pack_model

    raw = model_bytes(path_or_bytes)
    m = load_model(raw)
    g = m.subgraphs[0]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.RESHAPE
    code.version = 1
    ops, n = [], 0
    for op in g.operators:
        if op_name(m, op) == "DEPTHWISE_CONV_2D":
            w = g.tensors[op.inputs[1]]
            if int(w.shape[1]) * int(w.shape[2]) > max_taps:
                if n == 0:
                    m.operatorCodes.append(code)
                routed = copy.copy(w)
                routed.buffer, routed.name = 0, (w.name or b"") + b"/builtin_route"
                shape_buf = s.BufferT()
                shape_buf.data = np.frombuffer(np.asarray(w.shape, np.int32).tobytes(), np.uint8)
                m.buffers.append(shape_buf)
                shape = s.TensorT()
                shape.shape, shape.type, shape.buffer = [4], s.TensorType.INT32, len(m.buffers) - 1
                shape.name = routed.name + b"/shape"
                g.tensors += [routed, shape]
                r = s.OperatorT()
                r.opcodeIndex = len(m.operatorCodes) - 1
                r.inputs, r.outputs = [op.inputs[1], len(g.tensors) - 1], [len(g.tensors) - 2]
                r.builtinOptionsType, r.builtinOptions = s.BuiltinOptions.ReshapeOptions, s.ReshapeOptionsT()
                r.builtinOptions.newShape = [int(d) for d in w.shape]
                ops.append(r)
                op.inputs = list(op.inputs)
                op.inputs[1] = len(g.tensors) - 2
                n += 1
        ops.append(op)
    if n == 0:
        return raw, 0
    g.operators = ops
    return pack_model(m), n


def load_args(path_or_bytes, kernels: str) -> tuple[dict, bool]:
    """({model_path or model_content}, use the default delegates) for runtime.tflite.interpreter."""
    check_kernels(kernels)
    if kernels == ROUTED:
        content, n = routed_model(path_or_bytes)
        if n:
            return {"model_content": content}, True
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return {"model_content": bytes(path_or_bytes)}, kernels != BUILTIN
    return {"model_path": str(path_or_bytes)}, kernels != BUILTIN


def distinct_sets(path_or_bytes) -> list[str]:
    """The kernel sets that run the file as different programs (routing a file with no >25-tap depthwise conv
    changes nothing: it is XNNPACK)."""
    sets = [XNNPACK, BUILTIN]
    if routed_model(path_or_bytes)[1]:
        sets.append(ROUTED)
    return sets
