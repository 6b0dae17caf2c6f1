"""The one reader of the .tflite flatbuffer (ai_edge_litert's generated schema bindings): operators with their
builtin names, tensors and options, tensors with their quantization parameters, and the op census built on them
(op_counts, op_dtypes, float_compute_ops), `split_ops` (a decoded file's network ops and decode-tail ops),
`inline_buffers`, the one rewrite (for the metadata writer), and the object API for the model editors
(runtime/tflite_profile.py's op cutting, runtime/tflite_kernels.py's routing): load_model, op_name, pack_model.
Nothing here runs a model (runtime/tflite.py does).
"""

from __future__ import annotations

import functools
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posekit.errors import UserError
from posekit.io import first_line

# Ops whose arithmetic dominates a conv net; `float_compute_ops` reports any of these left in float.
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "AVERAGE_POOL_2D",
               "MAX_POOL_2D", "ADD", "MUL", "MEAN", "CONCATENATION", "DEPTH_TO_SPACE", "PAD", "RESIZE_BILINEAR")
# The builtin options read into Operator.options (those the PyTorch twin of a quantized file needs).
OPTION_FIELDS = ("Padding", "StrideW", "StrideH", "DilationWFactor", "DilationHFactor", "FusedActivationFunction",
                 "DepthMultiplier", "Axis", "KeepDims", "BlockSize", "FilterWidth", "FilterHeight", "AlignCorners",
                 "HalfPixelCenters")


def _schema():
    from ai_edge_litert import schema_py_generated as s

    return s


def _enum(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_")}


@functools.cache
def _builtin_names() -> dict:
    return _enum(_schema().BuiltinOperator)


def _model(model: str | Path | bytes):
    buf = bytes(model) if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    return _schema().Model.GetRootAs(buf, 0)


def builtin_name(model, op) -> str:
    """The builtin name ('CONV_2D', ...) of operator `op` of a parsed schema Model; CUSTOM_<code> when unknown.
    Codes past 127 live only in BuiltinCode, older files only in DeprecatedBuiltinCode: the larger one is it."""
    oc = model.OperatorCodes(op.OpcodeIndex())
    code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
    return _builtin_names().get(code, f"CUSTOM_{code}")


@dataclass
class Operator:
    index: int
    name: str  # builtin name, e.g. CONV_2D
    inputs: list[int]  # tensor indices (-1: an omitted optional input)
    outputs: list[int]
    options: dict = field(default_factory=dict)  # OPTION_FIELDS present in the op's builtin options


@dataclass
class Tensor:
    index: int
    name: str
    dtype: str  # lower-case TensorType name: float32, int8, ...
    shape: list[int]
    scale: np.ndarray | None  # quantization parameters (per tensor or per channel); None when not quantized
    zero_point: np.ndarray | None


def operators(model: str | Path | bytes, subgraph: int = 0) -> list[Operator]:
    """A subgraph's operators in execution order, with their builtin options (OPTION_FIELDS)."""
    s = _schema()
    m = _model(model)
    opt_names = _enum(s.BuiltinOptions)
    sg = m.Subgraphs(subgraph)
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        opts = {}
        table = op.BuiltinOptions()
        kind = opt_names.get(op.BuiltinOptionsType(), "NONE")
        if table is not None and kind != "NONE" and hasattr(s, kind):
            o = getattr(s, kind)()
            o.Init(table.Bytes, table.Pos)
            opts = {a: getattr(o, a)() for a in OPTION_FIELDS if hasattr(o, a)}
        ins = [int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(t) for t in op.OutputsAsNumpy()] if op.OutputsLength() else []
        ops.append(Operator(i, builtin_name(m, op), ins, outs, opts))
    return ops


def tensors(model: str | Path | bytes, subgraph: int = 0) -> list[Tensor]:
    """A subgraph's tensors with their names, dtypes, shapes and quantization parameters."""
    types = {code: name.lower() for code, name in _enum(_schema().TensorType).items()}
    sg = _model(model).Subgraphs(subgraph)
    out = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        q = t.Quantization()
        quantized = q is not None and q.ScaleLength() > 0
        out.append(Tensor(i, t.Name().decode(), types[t.Type()],
                          [int(v) for v in t.ShapeAsNumpy()] if t.ShapeLength() else [],
                          q.ScaleAsNumpy().copy() if quantized else None,
                          q.ZeroPointAsNumpy().copy() if quantized and q.ZeroPointLength() else None))
    return out


def _census(model: str | Path | bytes):
    """(op name, [output dtypes]) of every op in every subgraph."""
    m = _model(model)
    types = {code: name.lower() for code, name in _enum(_schema().TensorType).items()}
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            outs = [types[sg.Tensors(t).Type()] for t in op.OutputsAsNumpy() if t >= 0] if op.OutputsLength() else []
            yield builtin_name(m, op), outs


def op_counts(model: str | Path | bytes) -> dict[str, int]:
    """{op name: count} over the model, e.g. {'CONV_2D': 40, 'DEPTHWISE_CONV_2D': 30, ...}."""
    return dict(Counter(name for name, _ in _census(model)))


def op_dtypes(model: str | Path | bytes) -> dict[str, int]:
    """{'OP:compute dtype': count}, the dtype an op computes in being its output's (a hybrid int8-weight op
    outputs float), e.g. {'CONV_2D:int8': 40, 'QUANTIZE:int8': 1, 'DEQUANTIZE:float32': 1}."""
    return dict(Counter(f"{name}:{outs[0] if outs else '-'}" for name, outs in _census(model)))


def float_compute_ops(model: str | Path | bytes, ops: Iterable[str] = COMPUTE_OPS) -> dict[str, int]:
    """Compute ops that still run in float (float32/float16 output): empty for a fully-integer model."""
    ops = set(ops)
    return dict(Counter(name for name, outs in _census(model) if name in ops and outs and outs[0].startswith("float")))


def _inline(m, raw: bytes) -> bool:
    """Move constant data written after the flatbuffer (Buffer.offset/size) into ModelT `m`'s buffers; any moved."""
    moved = False
    for b in m.buffers or []:
        if (b.offset or 0) > 1:
            b.data = np.frombuffer(raw[b.offset:b.offset + b.size], np.uint8)
            b.offset = b.size = 0
            moved = True
    return moved


def pack_model(m) -> bytes:
    """A schema ModelT as .tflite bytes."""
    import flatbuffers

    b = flatbuffers.Builder(1 << 16)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def load_model(path: str | Path | bytes):
    """The file (or .tflite bytes) as a schema ModelT (the object API, to edit and `pack_model`) with every
    constant's data inline (ai-edge-quantizer writes constant data after the flatbuffer, Buffer.offset/size: read it
    from there)."""
    raw = bytes(path) if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
    path = "<.tflite bytes>" if isinstance(path, (bytes, bytearray)) else path
    try:
        m = _schema().ModelT.InitFromPackedBuf(raw, 0)
    except Exception as e:  # a truncated or foreign file: name it, do not show a flatbuffers traceback
        raise UserError(f"{path}: not a TFLite flatbuffer ({type(e).__name__}: {e})") from None
    _inline(m, raw)
    if not m.subgraphs:
        raise UserError(f"{path}: the model has no subgraph")
    return m


def op_name(m, op) -> str:
    """builtin_name for the object API: operator `op` (OperatorT) of ModelT `m`."""
    oc = m.operatorCodes[op.opcodeIndex]
    code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
    return _builtin_names().get(code, f"CUSTOM_{code}")


def inline_buffers(model: bytes) -> bytes:
    """ai-edge-quantizer writes constant data after the flatbuffer (Buffer.offset/size, a newer schema field that
    tflite-support 0.4.4's schema bindings do not know and would drop): move it back into the buffers, with the
    current schema's bindings (ai_edge_litert), before the metadata populator (runtime/tflite_metadata.py) rewrites
    the model."""
    m = _schema().ModelT.InitFromPackedBuf(model, 0)
    return pack_model(m) if _inline(m, model) else model



def split_ops(path) -> tuple[Counter, Counter]:
    """Of a decoded .tflite (runtime/decoded.py): ({'OP:dtype': n} of the network: every op the `heatmaps`
    output depends on, {'OP:dtype': n} of the decode tail: the rest), from the first subgraph. dtype: the op's
    first output's."""
    s = _schema()
    m = _model(path)
    sg = m.Subgraphs(0)
    types = {v: k.lower() for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
    producer = {int(t): i for i, op in enumerate(ops) for t in op.OutputsAsNumpy()}
    sig = m.SignatureDefs(0)
    outs = {sig.Outputs(i).Name().decode(): sig.Outputs(i).TensorIndex() for i in range(sig.OutputsLength())}
    if "heatmaps" not in outs:
        raise UserError(f"{path}: the signature has no 'heatmaps' output")
    net, todo = set(), [producer[outs["heatmaps"]]]
    while todo:  # the heatmaps' ancestors
        i = todo.pop()
        if i in net:
            continue
        net.add(i)
        todo += [producer[int(t)] for t in ops[i].InputsAsNumpy() if t >= 0 and int(t) in producer]

    def tag(i):
        op = ops[i]
        o = op.OutputsAsNumpy()
        return f"{builtin_name(m, op)}:{types[sg.Tensors(int(o[0])).Type()] if len(o) else '-'}"

    return (Counter(tag(i) for i in range(len(ops)) if i in net),
            Counter(tag(i) for i in range(len(ops)) if i not in net))


# ---- structure check (runtime/artifact_check.py calls it before any runtime loads a file) ----
TFLITE_ID = b"TFL3"  # the schema's file_identifier, bytes 4..8 of every .tflite
_DAMAGE = (struct.error, IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError, KeyError,
           AttributeError, RecursionError)


class _Damaged(Exception):
    pass


def _need(ok: bool, what: str):
    if not ok:
        raise _Damaged(what)


def check_structure(path: str | Path) -> None:
    """Walk the .tflite flatbuffer (subgraphs, tensors, operators, operator codes, buffers), every vector length
    and index bounded by the file (a flipped length cannot make the walk run away), every buffer's bytes inside
    the file. One UserError on damage."""
    s = _schema()
    p = Path(path)
    buf = p.read_bytes()
    n = len(buf)
    try:
        _need(n >= 8, f"{n} bytes, too short for a flatbuffer")
        _need(buf[4:8] == TFLITE_ID, f"no TFL3 identifier (bytes 4-8 are {buf[4:8]!r}): not a .tflite or damaged "
              "header")
        _need(struct.unpack_from("<I", buf, 0)[0] < n, "the root offset points past the end of the file")
        m = s.Model.GetRootAs(buf, 0)
        def length(k, what, size=4):  # a vector of k tables or int32s takes 4k bytes of the file, of bytes k
            _need(0 <= k <= n // size, f"{what}: {k} entries cannot fit in {n} bytes (truncated or damaged)")
            return k

        n_codes = length(m.OperatorCodesLength(), "operator_codes")
        n_bufs = length(m.BuffersLength(), "buffers")
        for i in range(n_codes):
            m.OperatorCodes(i).BuiltinCode()
        for i in range(n_bufs):
            b = m.Buffers(i)
            k = length(b.DataLength(), f"buffers[{i}].data", 1)
            if k:
                _need(b.Data(k - 1) is not None, f"buffers[{i}].data")
            off, size = b.Offset(), b.Size()
            _need(off == 0 or (1 < off and off + size <= n), f"buffers[{i}]: bytes {off}..{off + size} lie past the "
                  f"end of the file ({n} bytes): truncated")
        n_sub = length(m.SubgraphsLength(), "subgraphs")
        _need(n_sub >= 1, "no subgraph")
        for g in range(n_sub):
            sg = m.Subgraphs(g)
            n_t = length(sg.TensorsLength(), f"subgraphs[{g}].tensors")
            for t in range(n_t):
                ten = sg.Tensors(t)
                length(ten.ShapeLength(), f"subgraphs[{g}].tensors[{t}].shape")
                _need(ten.Buffer() < max(n_bufs, 1), f"subgraphs[{g}].tensors[{t}].buffer {ten.Buffer()} of "
                      f"{n_bufs} buffers")
                ten.ShapeAsNumpy() if ten.ShapeLength() else None
            for vec, get in (("inputs", sg.InputsAsNumpy), ("outputs", sg.OutputsAsNumpy)):
                if getattr(sg, f"{vec.capitalize()}Length")():
                    idx = get()
                    _need(all(-1 <= int(v) < n_t for v in idx), f"subgraphs[{g}].{vec}: a tensor index past "
                          f"{n_t} tensors")
            for o in range(length(sg.OperatorsLength(), f"subgraphs[{g}].operators")):
                op = sg.Operators(o)
                _need(op.OpcodeIndex() < n_codes, f"subgraphs[{g}].operators[{o}].opcode_index {op.OpcodeIndex()} "
                      f"of {n_codes}")
                for vec in ("Inputs", "Outputs"):
                    if length(getattr(op, f"{vec}Length")(), f"subgraphs[{g}].operators[{o}].{vec.lower()}"):
                        _need(all(-1 <= int(v) < n_t for v in getattr(op, f"{vec}AsNumpy")()),
                              f"subgraphs[{g}].operators[{o}].{vec.lower()}: a tensor index past {n_t} tensors")
    except _Damaged as e:
        raise UserError(f"{p}: damaged .tflite: {e}") from None
    except _DAMAGE as e:
        raise UserError(f"{p}: damaged .tflite: the flatbuffer cannot be read ({type(e).__name__}: "
                        f"{first_line(e)}); truncated or overwritten") from None
