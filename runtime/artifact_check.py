"""The one check every stage makes before it runs an artifact (parity, predict, device_bench bench, QAT): the
bytes are the ones the manifest lists (sha256, when it lists the file), and the file is whole in its format's own
structure (a .tflite flatbuffer walked with bounds, an ONNX protobuf checked by onnx, a Core ML package's manifest
and spec present). Damage is one UserError line naming the file and what is wrong, never a struct.error traceback
or an interpreter crash on a truncated file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from posekit.errors import UserError
from posekit.io import first_line, sha256_file
from posekit.safe_paths import inside

TFLITE_ID = b"TFL3"  # the schema's file_identifier, bytes 4..8 of every .tflite
_DAMAGE = (struct.error, IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError, KeyError,
           AttributeError, RecursionError)


class _Damaged(Exception):
    pass


def _need(ok: bool, what: str):
    if not ok:
        raise _Damaged(what)


def check_tflite_structure(path: str | Path) -> None:
    """Walk the .tflite flatbuffer (subgraphs, tensors, operators, operator codes, buffers), every vector length
    and index bounded by the file (a flipped length cannot make the walk run away), every buffer's bytes inside
    the file. One UserError on damage."""
    from ai_edge_litert import schema_py_generated as s

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


def check_onnx_structure(path: str | Path) -> None:
    import onnx

    p = Path(path)
    try:
        onnx.checker.check_model(str(p))
    except Exception as e:  # onnx raises its own ValidationError and protobuf's DecodeError on damage
        raise UserError(f"{p}: damaged .onnx: {first_line(e)}") from None


def check_coreml_structure(path: str | Path) -> None:
    """An .mlpackage: Manifest.json readable and every item it lists present inside the package; an .mlmodel: a
    Core ML protobuf that parses."""
    p = Path(path)
    if p.suffix == ".mlpackage":
        mf = p / "Manifest.json"
        try:
            items = json.loads(mf.read_text())["itemInfoEntries"]
            for key, item in items.items():
                f = inside(p / "Data", item["path"], f"{mf}: itemInfoEntries.{key}.path")
                if not f.exists():
                    raise UserError(f"{mf}: itemInfoEntries.{key}.path: {item['path']} is missing; damaged package")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{p}: damaged .mlpackage: Manifest.json unreadable ({type(e).__name__}: "
                            f"{first_line(e)})") from None
        return
    from coremltools.proto import Model_pb2

    try:
        Model_pb2.Model().ParseFromString(p.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise UserError(f"{p}: damaged .mlmodel: {first_line(e)}") from None


def check_artifact(path: str | Path, sha256: str | None = None, where: str | None = None) -> Path:
    """`path` when its bytes are the ones listed (sha256, when given; `where` names the manifest entry) and its
    structure is whole; else one UserError. Run before any runtime loads the file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such artifact")
    if not (p.is_file() or p.is_dir() and p.suffix == ".mlpackage"):  # a FIFO would block the hash forever
        raise UserError(f"{p}: not a regular file (a folder, device or pipe stands there)")
    if sha256 is not None and sha256_file(p) != sha256:
        raise UserError(f"{p}: its sha256 differs from {where or 'the manifest'} (the file changed after it was "
                        "listed); refused")
    kind = p.suffix.lower()
    if kind == ".tflite":
        check_tflite_structure(p)
    elif kind == ".onnx":
        check_onnx_structure(p)
    elif kind in (".mlpackage", ".mlmodel"):
        check_coreml_structure(p)
    return p
