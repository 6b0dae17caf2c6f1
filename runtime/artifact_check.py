"""The one check every stage makes before it runs an artifact (parity, predict, device_bench bench, QAT): the
bytes are the ones the manifest lists (sha256, when it lists the file), and the file is whole in its format's own
structure (a .tflite flatbuffer walked with bounds, an ONNX protobuf checked by onnx, a Core ML package's manifest
and spec present). Damage is one UserError line naming the file and what is wrong, never a struct.error traceback
or an interpreter crash on a truncated file."""

from __future__ import annotations

import json
from pathlib import Path

from posekit.errors import UserError
from posekit.io import first_line, sha256_file
from posekit.safe_paths import inside
from runtime.tflite_flatbuffer import check_structure as check_tflite_structure


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
    from posekit.coreml_import import ct

    Model_pb2 = ct.proto.Model_pb2

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
