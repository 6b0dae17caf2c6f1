"""Route the depthwise convs XNNPACK runs badly to TFLite's builtin kernels, in the .tflite itself (issue 27).

XNNPACK (ai-edge-litert 2.3.0) runs a DEPTHWISE_CONV_2D with more than 25 taps (7x7, also 6x6) 8-20x slower than
the builtin kernels on this x86 host (AVX-512 VNNI / AMX), int8 worst (`python -m runtime.dwconv_repro` reproduces
it with one op built from the schema; 3x3 and 5x5 run 3-5x faster under XNNPACK). EfficientPose's 7x7 blocks then
make the int8 file 4-5x slower than fp32 under the default kernels, and builtin-only is slower for everything else.

The XNNPACK delegate takes a convolution only when its filter is a constant; builtin kernels take any filter. So
each such op's filter is passed through a RESHAPE to its own shape: the op is then left to the builtin kernels while
everything around it stays on XNNPACK. Each op computes exactly what the builtin kernels compute for it (the
test checks bit equality); the cost is one copy of the filter (7*7*C bytes in int8) per op and run, and XNNPACK
partitions split at each routed op.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

MAX_XNNPACK_TAPS = 25  # XNNPACK's largest unipass depthwise kernel (5x5); more taps take its slow path here


def route_large_dwconv(src: str | Path, dst: str | Path, max_taps: int = MAX_XNNPACK_TAPS) -> int:
    """Write `src` to `dst` (atomically) with every DEPTHWISE_CONV_2D of more than `max_taps` taps routed to the
    builtin kernels (module doc); returns how many were routed."""
    from ai_edge_litert import schema_py_generated as s

    from posekit.export_tflite import write_tflite
    from runtime.tflite_flatbuffer import load_model, op_name, pack_model

    m = load_model(src)
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
    g.operators = ops
    write_tflite(pack_model(m), dst)
    return n
