"""artifacts/<model>/manifest.json, the one reader and writer: what every artifact is and how to feed it (written by
convert/quantize; read by parity, device_bench, demo through `load`). Validated against manifest.schema.json when it
is written (atomically, after the artifacts) and when it is read."""

from __future__ import annotations

import datetime
import json
from importlib import metadata
from pathlib import Path

from posekit.errors import UserError
from posekit.io import atomic_write_json, sha256_file
from posekit.keypoints import MEAN, STD, keypoint_info
from posekit.safe_paths import inside

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


def validate(manifest: dict, path="manifest.json") -> None:
    import jsonschema

    try:
        jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
    except jsonschema.ValidationError as e:
        where = "/".join(str(x) for x in e.absolute_path) or "<top>"
        raise UserError(f"{path}: {where}: {e.message}") from None


def read(outdir: Path) -> dict | None:
    """The manifest in `outdir` as written (not validated), or None when there is none (convert merging into it)."""
    p = Path(outdir) / "manifest.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # nesting past the C stack too
        raise UserError(f"{p}: malformed json: {e}") from None


def load(model_dir: Path, formats=None) -> dict:
    """The one reader for consumers: artifacts/<model>/manifest.json validated against the schema, each listed
    artifact present on disk. formats: keep only artifacts of these formats (e.g. ("tflite",)), and fail when none
    is listed. Every problem is one UserError naming the file and the field."""
    model_dir = Path(model_dir)
    p = model_dir / "manifest.json"
    if not p.is_file():
        raise UserError(f"{p}: no manifest.json (run `make convert` first, or pass --model-dir artifacts/<model>)")
    m = read(model_dir)
    for i, a in enumerate(m.get("artifacts") or [] if isinstance(m, dict) else []):
        if isinstance(a, dict) and isinstance(a.get("file"), str):
            # the folder is untrusted: a listed file stays inside it ('..', absolute paths, symlinks out refused)
            if not inside(model_dir, a["file"], f"{p}: artifacts[{i}].file").exists():
                raise UserError(f"{p}: artifacts[{i}].file: {a['file']} is missing on disk")
    validate(m, p)
    if formats is not None:
        fmts = tuple(formats)
        m = {**m, "artifacts": [a for a in m["artifacts"] if a["format"].startswith(fmts)]}
        if not m["artifacts"]:
            raise UserError(f"{p}: artifacts: lists no {' / '.join(fmts)} artifact")
    return m


def mismatched(model_dir: Path, m: dict | None = None) -> list[str]:
    """Files whose sha256 on disk differs from the manifest's (or that are missing): [] when every entry matches."""
    model_dir = Path(model_dir)
    m = read(model_dir) if m is None else m
    bad = []
    for i, a in enumerate((m or {}).get("artifacts", [])):
        f = inside(model_dir, a["file"], f"{model_dir / 'manifest.json'}: artifacts[{i}].file")
        if not f.exists() or sha256_file(f) != a["sha256"]:
            bad.append(a["file"])
    return bad


def listing(path: Path) -> tuple[str | None, str | None]:
    """(sha256, 'manifest.json: artifacts[i]') of the entry that lists the artifact `path` in the manifest of its
    folder or the one above (artifacts/<model>/tflite/x.tflite), else (None, None): what a stage checks the file
    against before running it."""
    path = Path(path)
    for mf in (path.parent / "manifest.json", path.parent.parent / "manifest.json"):
        if not mf.is_file():
            continue
        try:
            rel = path.resolve().relative_to(mf.parent.resolve()).as_posix()
            m = json.loads(mf.read_text())
            for i, a in enumerate(m.get("artifacts") or []):
                if isinstance(a, dict) and a.get("file") == rel and isinstance(a.get("sha256"), str):
                    return a["sha256"], f"{mf}: artifacts[{i}].sha256"
        except (OSError, ValueError, AttributeError):
            continue
    return None, None


def write(outdir: Path, head: dict, artifacts: list[dict], keep: list[dict] = (), **extra) -> Path:
    """Write the manifest: `artifacts` plus entries of `keep` (an earlier manifest's) for files not rewritten now
    that still exist unchanged (so `quantize` adds to what `convert` wrote)."""
    files = {a["file"] for a in artifacts}
    kept = [a for a in keep if a["file"] not in files
            and inside(outdir, a["file"], f"{Path(outdir) / 'manifest.json'}: an earlier entry").exists()
            and sha256_file(outdir / a["file"]) == a["sha256"]]
    m = {**head, "artifacts": sorted(kept + artifacts, key=lambda a: a["file"]), **extra}
    validate(m)
    return atomic_write_json(Path(outdir) / "manifest.json", m)
