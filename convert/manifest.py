"""artifacts/<model>/manifest.json: what every artifact is and how to feed it (read by parity, device_bench, demo).
Validated against manifest.schema.json before it is written (atomically, after every artifact)."""

from __future__ import annotations

import datetime
import json
from importlib import metadata
from pathlib import Path

from posekit.errors import UserError
from posekit.io import atomic_write_json, sha256_file
from posekit.keypoints import MEAN, STD, keypoint_info

SCHEMA = Path(__file__).with_name("manifest.schema.json")
SCHEMA_VERSION = 1
NORMALIZATION = {"color": "RGB", "scale": 1 / 255, "mean": list(MEAN), "std": list(STD)}


def tool_versions() -> dict:
    out = {}
    for pkg, key in (("torch", "torch"), ("litert-torch", "litert_torch"), ("ai-edge-litert", "ai_edge_litert"),
                     ("ai-edge-quantizer", "ai_edge_quantizer"), ("coremltools", "coremltools"), ("onnx", "onnx"),
                     ("onnxsim", "onnxsim"), ("onnxruntime", "onnxruntime")):
        try:
            out[key] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def artifact(outdir: Path, path: Path, fmt: str, precision: str, quantizer: str | None, inputs: list, outputs: list,
             **extra) -> dict:
    """One manifest entry for a finished file (size and sha256 read from disk)."""
    p = Path(path)
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return {"file": p.relative_to(outdir).as_posix(), "format": fmt, "precision": precision, "quantizer": quantizer,
            "size_bytes": size, "sha256": sha256_file(p), "inputs": inputs, "outputs": outputs, **extra}


def header(source, arch_file: Path) -> dict:
    a = source.arch
    info = keypoint_info(a.num_joints)
    return {
        "schema_version": SCHEMA_VERSION, "model": a.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "tool_versions": tool_versions(),
        "source": {"checkpoint": source.checkpoint, "checkpoint_sha256": source.checkpoint_sha256,
                   "arch_file": str(arch_file), "arch_sha256": sha256_file(arch_file),
                   "arch_origin": source.arch_origin, "random_init": source.random_init, "note": source.note},
        "arch": a.to_dict(), "num_joints": a.num_joints, "keypoint_names": info["names"],
        "skeleton": info["skeleton"], "flip_pairs": info["flip_pairs"], "heatmap_stride": 4,
        "input_size": list(a.input_size), "normalization": dict(NORMALIZATION),
    }


def validate(manifest: dict) -> None:
    import jsonschema

    try:
        jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
    except jsonschema.ValidationError as e:
        where = "/".join(str(x) for x in e.absolute_path) or "<top>"
        raise UserError(f"manifest.json: {where}: {e.message}") from None


def read(outdir: Path) -> dict | None:
    p = Path(outdir) / "manifest.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: malformed json: {e}") from None


def write(outdir: Path, head: dict, artifacts: list[dict], keep: list[dict] = (), **extra) -> Path:
    """Write the manifest: `artifacts` plus entries of `keep` (an earlier manifest's) for files not rewritten now
    that still exist unchanged (so `quantize` adds to what `convert` wrote)."""
    files = {a["file"] for a in artifacts}
    kept = [a for a in keep if a["file"] not in files and (outdir / a["file"]).exists()
            and sha256_file(outdir / a["file"]) == a["sha256"]]
    m = {**head, "artifacts": sorted(kept + artifacts, key=lambda a: a["file"]), **extra}
    validate(m)
    return atomic_write_json(Path(outdir) / "manifest.json", m)
