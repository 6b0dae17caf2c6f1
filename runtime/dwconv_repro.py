"""A one-op .tflite that reproduces the XNNPACK slow path behind issue 27's int8 slowdown: a DEPTHWISE_CONV_2D
with more than 25 taps (7x7; 6x6 too) runs 20-100x slower under XNNPACK than under TFLite's builtin kernels on this
host (ai-edge-litert 2.3.0, x86 with AVX-512 VNNI / AMX), while 3x3 and 5x5 run 3-5x faster under XNNPACK. Int8
(per-channel weights) is hit hardest, fp32 too. EfficientPose's 7x7 inverted-residual blocks are where the int8
file spends ~95% of its XNNPACK time (runtime/tflite_profile.py shows it).

`python -m runtime.dwconv_repro [--out DIR]` builds the op from the schema alone (no converter, no quantizer: so the
cause cannot be our graph), times k = 3, 5, 7 for fp32 and int8 on both kernel sets and prints the table.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from posekit.errors import UserError


def dwconv_model(k: int, hwc: tuple[int, int, int] = (8, 6, 576), dtype: str = "int8", seed: int = 0) -> bytes:
    """One DEPTHWISE_CONV_2D, k x k, stride 1, SAME padding, ReLU, on a (1, H, W, C) input: fp32, or int8 the way
    ai-edge-quantizer writes it (int8 activations, per-channel symmetric int8 weights on axis 3, int32 bias)."""
    from ai_edge_litert import schema_py_generated as s

    from .tflite_flatbuffer import pack_model

    if dtype not in ("fp32", "int8"):
        raise UserError(f"dtype {dtype!r}: expected fp32 or int8")
    h, w, c = hwc
    rng = np.random.default_rng(seed)
    wf = rng.normal(0, 0.1, (1, k, k, c)).astype(np.float32)
    bf = rng.normal(0, 0.1, c).astype(np.float32)
    buffers = [s.BufferT()]

    def tensor(name, shape, ttype, data=None, scale=None, zp=None, axis=0):
        t = s.TensorT()
        t.name, t.shape, t.type = name.encode(), list(shape), ttype
        t.buffer = 0
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        if scale is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint, q.quantizedDimension = list(map(float, scale)), list(map(int, zp)), axis
            t.quantization = q
        return t

    if dtype == "fp32":
        f32 = s.TensorType.FLOAT32
        ts = [tensor("x", (1, h, w, c), f32), tensor("w", wf.shape, f32, wf), tensor("b", (c,), f32, bf),
              tensor("y", (1, h, w, c), f32)]
    else:
        sx, sy = 0.05, 0.05
        sw = np.abs(wf).reshape(-1, c).max(0) / 127
        wq = np.clip(np.round(wf / sw), -127, 127).astype(np.int8)
        bq = np.round(bf / (sx * sw)).astype(np.int32)
        i8 = s.TensorType.INT8
        ts = [tensor("x", (1, h, w, c), i8, scale=[sx], zp=[-128]),
              tensor("w", wq.shape, i8, wq, scale=sw, zp=[0] * c, axis=3),
              tensor("b", (c,), s.TensorType.INT32, bq, scale=sx * sw, zp=[0] * c),
              tensor("y", (1, h, w, c), i8, scale=[sy], zp=[-128])]
    opts = s.DepthwiseConv2DOptionsT()
    opts.padding, opts.strideH, opts.strideW = s.Padding.SAME, 1, 1
    opts.depthMultiplier, opts.dilationHFactor, opts.dilationWFactor = 1, 1, 1
    opts.fusedActivationFunction = s.ActivationFunctionType.RELU
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.DepthwiseConv2DOptions, opts
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.DEPTHWISE_CONV_2D
    code.version = 3 if dtype == "int8" else 2
    g = s.SubGraphT()
    g.tensors, g.operators, g.inputs, g.outputs, g.name = ts, [op], [0], [3], b"dwconv"
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, [code], [g], buffers
    m.description = f"one {k}x{k} depthwise conv, {dtype}, {h}x{w}x{c}".encode()
    return pack_model(m)


def loaded(path: Path, kernels: str, dtype: str, seed: int = 0):
    """An interpreter of the one-op file on `kernels` with a seeded input set (N(0, 1) floats, or int8 over the whole
    range): what the bench and the tests run it on."""
    from .tflite import interpreter

    it = interpreter(path, 1, kernels=kernels)
    d = it.get_input_details()[0]
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, d["shape"]) if dtype == "fp32" else rng.integers(-128, 128, d["shape"])
    it.set_tensor(d["index"], x.astype(d["dtype"]))
    return it


def output(it) -> np.ndarray:
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def measure(out: Path, ks=(3, 5, 7), hwc=(8, 6, 576), repeats: int = 7) -> list[dict]:
    """Write each model to `out` and time it on both kernel sets: [{k, dtype, file, xnnpack_ms, builtin_ms}]."""
    from posekit.export_tflite import write_tflite

    from .tflite_profile import time_invoke

    rows = []
    for dtype in ("fp32", "int8"):
        for k in ks:
            path = write_tflite(dwconv_model(k, hwc, dtype), out / f"dwconv_k{k}_{dtype}.tflite")
            row = {"k": k, "dtype": dtype, "file": str(path)}
            for kernels in ("xnnpack", "builtin"):
                row[f"{kernels}_ms"] = time_invoke(loaded(path, kernels, dtype), repeats)
            rows.append(row)
    return rows


def build_parser():
    from posekit.cli import ArgumentParser, hxw_type

    ap = ArgumentParser(prog="python -m runtime.dwconv_repro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="folder for the one-op .tflite files (default: a temporary folder)")
    ap.add_argument("--shape", type=hxw_type(1, 3), default=(8, 6, 576), help="input HxWxC (default 8x6x576)")
    return ap


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dwconv-repro-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = measure(out, hwc=tuple(args.shape))
    print(f"one DEPTHWISE_CONV_2D, {'x'.join(map(str, args.shape))}, SAME, 1 thread (ms per run, min of batches):")
    print(f"{'kernel':>6} {'dtype':>5} {'xnnpack':>9} {'builtin':>9} {'xnn/builtin':>12}")
    for r in rows:
        print(f"{r['k']}x{r['k']:<4} {r['dtype']:>5} {r['xnnpack_ms']:9.3f} {r['builtin_ms']:9.3f} "
              f"{r['xnnpack_ms'] / r['builtin_ms']:12.2f}")
    return 0


def main(argv=None) -> int:
    from posekit.cli import main_guard

    return main_guard(_main)(argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
