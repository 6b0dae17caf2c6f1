"""Facts an app needs to use an artifact without our code, written into the artifact itself, and read back from it.

One dict of facts (`facts(manifest_header, manifest_entry)`): model name, version, author, license, source checkpoint
and arch sha256, input size / layout / dtype / quantization, the RGB normalization (and whether it is folded into
the model), the heatmap output (layout, stride), keypoint names, skeleton and flip pairs. Each format gets them in
its own standard place, added in place (atomic rewrite) to an already written file:

- .tflite: the TFLite Metadata schema (runtime.tflite_metadata, written with tflite-support);
- .onnx: ModelProto.metadata_props (plain string key/values, JSON for lists) and doc_string;
- Core ML: the model's user-defined metadata, author, license, version and descriptions.

`read(path)` is the inverse: the facts from the file alone (no manifest), what `python -m predict` runs from.
"""

from __future__ import annotations

import json
from pathlib import Path

from posekit.errors import UserError
from posekit.io import atomic_path

AUTHOR = "posenas (EfficientPose-style pose network)"
LICENSE = "Apache-2.0"
KEY = "posenas"  # the ONNX metadata_props key / TFLite associated file (posenas.json) holding every fact as JSON
# the flat ONNX / Core ML keys, each a string (JSON for lists and dicts)
FLAT = ("keypoint_names", "skeleton", "flip_pairs", "heatmap_stride", "num_joints", "input_size", "normalization")


def suffix_format(path) -> str:
    """tflite | onnx | coreml, from the file name."""
    s = Path(path).suffix.lower()
    fmt = {".tflite": "tflite", ".onnx": "onnx", ".mlpackage": "coreml", ".mlmodel": "coreml"}.get(s)
    if fmt is None:
        raise UserError(f"{path}: not a model file (expected .tflite, .onnx, .mlpackage or .mlmodel)")
    return fmt


def facts(head: dict, entry: dict) -> dict:
    """The facts of one artifact: `head` is the manifest's header (posekit.manifest.header), `entry` its artifact
    entry (posekit.manifest.artifact: inputs/outputs as the file declares them)."""
    inp, out = entry["inputs"][0], entry["outputs"][0]
    src = head.get("source", {})
    h, w = head["input_size"]
    folded = bool(inp.get("normalization_folded") or inp.get("kind") == "image")
    ck = src.get("checkpoint_sha256") or ""
    desc = (f"{head['model']}: top-down single-person pose estimation. Input: one person crop, {h}x{w} (HxW) RGB"
            f"{', pixels 0-255 (normalization folded in)' if folded else ', (pixel/255 - mean) / std'}. Output: "
            f"{head['num_joints']} keypoint heatmaps at stride {head['heatmap_stride']} "
            f"({h // head['heatmap_stride']}x{w // head['heatmap_stride']}, {out['layout']}); a keypoint is its "
            f"heatmap's argmax (+ a quarter pixel toward the higher neighbour), its peak value the confidence."
            + (" Random weights (conversion test): keypoints mean nothing." if src.get("random_init") else ""))
    kp = next((o for o in entry.get("outputs") or [] if o.get("name") == "keypoints"), None)
    if kp is not None:  # a decoded file (issue 28): the decode's description from the entry
        desc += (f" Output `keypoints` {kp['shape']}: per joint (x, y, score), x and y in input-crop pixels, score "
                 f"the heatmap peak, decoded in the graph by the same rule.")
    return {
        **({"keypoints": {**(entry.get("decode") or {}), "dtype": kp.get("dtype")}} if kp is not None else {}),
        **({"kernels": entry["kernels"]} if entry.get("kernels") else {}),  # .tflite: the host's kernel record
        "name": head["model"], "description": desc, "version": f"{head['model']}@{ck[:12] or 'untracked'}",
        "author": AUTHOR, "license": LICENSE, "format": entry.get("format"), "precision": entry.get("precision"),
        "quantizer": entry.get("quantizer"), "checkpoint_sha256": src.get("checkpoint_sha256"),
        "arch_sha256": src.get("arch_sha256"), "random_init": src.get("random_init"),
        "num_joints": head["num_joints"], "keypoint_names": list(head["keypoint_names"]),
        "skeleton": [list(p) for p in head["skeleton"]], "flip_pairs": [list(p) for p in head["flip_pairs"]],
        "heatmap_stride": head["heatmap_stride"], "input_size": list(head["input_size"]),
        "normalization": {**head["normalization"], "folded": folded},
        "input": {k: inp.get(k) for k in ("name", "shape", "dtype", "layout", "kind", "quantization")},
        "output": {k: out.get(k) for k in ("name", "shape", "dtype", "layout", "quantization")},
    }


def embed(path, f: dict) -> None:
    """Write the facts into the artifact at `path` (in place, atomically)."""
    fmt = suffix_format(path)
    if fmt == "tflite":
        from runtime.tflite_metadata import write_tflite_metadata

        write_tflite_metadata(path, f)
    elif fmt == "onnx":
        write_onnx_metadata(path, f)
    else:
        write_coreml_metadata(path, f)


def _flat(f: dict) -> dict[str, str]:
    return {k: (json.dumps(f[k]) if not isinstance(f[k], str) else f[k]) for k in FLAT}


# ---- ONNX -------------------------------------------------------------------------------------------------------

def write_onnx_metadata(path, f: dict) -> Path:
    import onnx

    model = onnx.load(str(path))
    props = {"author": f["author"], "license": f["license"], "version": f["version"],
             "checkpoint_sha256": f["checkpoint_sha256"] or "", "arch_sha256": f["arch_sha256"] or "",
             "input_layout": f["input"]["layout"], "output_layout": f["output"]["layout"], **_flat(f),
             KEY: json.dumps(f)}
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    model.doc_string = f["description"]
    model.domain = model.domain or "posenas"
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def read_onnx(path) -> dict:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UserError(f"{path}: not an ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    props = {p.key: p.value for p in model.metadata_props}
    if KEY not in props:
        raise UserError(f"{path}: metadata_props has no {KEY!r} entry (convert it with this version of posenas)")
    try:
        return json.loads(props[KEY])
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: metadata_props[{KEY!r}]: malformed json: {e}") from None


# ---- Core ML ----------------------------------------------------------------------------------------------------

def write_coreml_metadata(path, f: dict) -> Path:
    """Core ML: the user-defined metadata keys still missing (convert.coreml writes the keypoint ones), plus the
    source hashes and version; re-saved through coremltools (works on Linux with skip_model_load)."""
    from posekit.coreml_import import ct

    path = Path(path)
    ml = ct.models.MLModel(str(path), skip_model_load=True)
    md = ml.user_defined_metadata
    want = {**_flat(f), "checkpoint_sha256": f["checkpoint_sha256"] or "", "arch_sha256": f["arch_sha256"] or "",
            "precision": f["precision"] or "", "output_layout": f["output"]["layout"]}
    for k, v in want.items():
        if k not in md:
            md[k] = v
    ml.author = ml.author or f["author"]
    ml.license = ml.license or f["license"]
    ml.short_description = ml.short_description or f["description"]
    ml.version = f["version"]
    with atomic_path(path, suffix=path.suffix) as tmp:
        ml.save(str(tmp))
    return path


def read_coreml(path) -> dict:
    """Facts from a Core ML model's spec (read with the protobuf classes coremltools ships; no macOS runtime)."""
    from runtime.coreml_reference import CoreMLProgram

    prog = CoreMLProgram(path)
    md = dict(prog.spec.description.metadata.userDefined)
    missing = [k for k in ("keypoint_names", "normalization", "heatmap_stride") if k not in md]
    if missing:
        raise UserError(f"{path}: user-defined metadata lacks {', '.join(missing)}")
    try:
        f = {k: json.loads(md[k]) for k in FLAT if k in md}
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: user-defined metadata: malformed json: {e}") from None
    inp = prog.inputs[0]
    image = inp["kind"] == "image"
    f["normalization"].setdefault("folded", image)
    out_shape = None
    for o in prog.spec.description.output[:1]:  # the heatmaps (a decoded file's keypoints come second)
        if o.type.WhichOneof("Type") == "multiArrayType":
            out_shape = list(o.type.multiArrayType.shape) or None
    if "keypoints" in md:
        try:
            f["keypoints"] = json.loads(md["keypoints"])
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: user-defined metadata keypoints: malformed json: {e}") from None
    f.update(name=prog.spec.description.metadata.shortDescription.split(":")[0] or Path(path).stem,
             version=prog.spec.description.metadata.versionString, precision=md.get("precision"),
             checkpoint_sha256=md.get("checkpoint_sha256"), arch_sha256=md.get("arch_sha256"),
             input={"name": inp["name"], "shape": inp["shape"], "dtype": "uint8" if image else "float32",
                    "layout": "NCHW", "kind": inp["kind"], "quantization": None},
             output={"name": prog.outputs[0], "shape": out_shape, "dtype": "float32",
                     "layout": md.get("output_layout", "NCHW"), "quantization": None})
    f.setdefault("input_size", list(inp["shape"][2:]))
    return f


# ---- any format -------------------------------------------------------------------------------------------------

def read(path) -> dict:
    """The facts of an artifact from the file alone."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model file")
    fmt = suffix_format(path)
    if fmt == "tflite":
        from runtime.tflite_metadata import read_tflite_metadata

        f = read_tflite_metadata(path)
    elif fmt == "onnx":
        f = read_onnx(path)
    else:
        f = read_coreml(path)
    f["format"] = fmt
    return f


def embed_entry(outdir, entry: dict, head: dict) -> dict:
    """Embed the facts into a manifest entry's file; the entry with the file's new size and sha256."""
    from posekit.io import sha256_file

    p = Path(outdir) / entry["file"]
    embed(p, facts(head, entry))
    size = sum(x.stat().st_size for x in p.rglob("*") if x.is_file()) if p.is_dir() else p.stat().st_size
    return {**entry, "size_bytes": size, "sha256": sha256_file(p)}
