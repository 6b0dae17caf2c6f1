"""TFLite Metadata (the schema Android Studio's ML Model Binding, MediaPipe and the TFLite Support library read) for
our .tflite files, written and read with tflite-support, the library made for that schema.

What goes in (facts from runtime.metadata.facts):
- ModelMetadata: name, description, version (model@checkpoint sha256 prefix), author, license; associated files
  skeleton.json (skeleton + flip pairs, 0-based joint pairs) and posenas.json (every fact, incl. the source
  checkpoint and arch sha256, as Ultralytics embeds its metadata.json);
- input tensor: ImageProperties (RGB), NormalizationOptions mean/std in pixel units (x - mean) / std on 0-255
  pixels, absent when the normalization is folded into the model, and Stats min/max (the value range);
- output tensor: FeatureProperties, a description of the heatmaps (NHWC, stride), and keypoint_names.txt as
  TENSOR_AXIS_LABELS (one name per heatmap channel, in order).
The int8 files keep their quantization in the model's own tensors (the schema's place for it); the descriptions
repeat it.

tflite-support 0.4.4 pins protobuf<4 (which onnx and coremltools here cannot use), so it is installed with
--no-deps (make setup); its metadata parts need only flatbuffers, and its native parser links libusb-1.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from posekit.errors import UserError
from posekit.io import atomic_path
from runtime.tflite_flatbuffer import inline_buffers

NAMES_FILE = "keypoint_names.txt"
SKELETON_FILE = "skeleton.json"
FACTS_FILE = "posenas.json"


def _lib():
    try:
        from tensorflow_lite_support.metadata import metadata_schema_py_generated as fb
        from tensorflow_lite_support.metadata import schema_py_generated as schema

        from posekit.skip_unused_deps import import_skipping

        metadata = import_skipping("tensorflow_lite_support.metadata.python.metadata", ("tensorflow",))
        from tensorflow_lite_support.metadata.python.metadata_writers import metadata_info
    except ImportError as e:
        raise UserError(f"TFLite metadata needs tflite-support 0.4.4 (`make setup`, or pip install --no-deps "
                        f"tflite-support==0.4.4; its native parser needs libusb-1.0: apt-get install libusb-1.0-0): "
                        f"{e}") from None
    return fb, schema, metadata, metadata_info


def _tensor_type(schema, dtype: str):
    return {"float32": schema.TensorType.FLOAT32, "float16": schema.TensorType.FLOAT16,
            "int8": schema.TensorType.INT8, "uint8": schema.TensorType.UINT8}.get(dtype)


def _assoc(fb, name: str, description: str, kind) -> object:
    a = fb.AssociatedFileT()
    a.name, a.description, a.type = name, description, kind
    return a


def metadata_buffer(f: dict) -> tuple[bytes, dict[str, bytes]]:
    """The metadata flatbuffer for the facts `f`, and the associated files it names (name -> bytes)."""
    import flatbuffers

    fb, schema, metadata, mi = _lib()
    h, w = f["input_size"]
    norm, inp, out = f["normalization"], f["input"], f["output"]
    stride, j = f["heatmap_stride"], f["num_joints"]
    folded = bool(norm.get("folded"))
    q_in = f" int8 quantized (scale {inp['quantization']['scale']:.6g}, zero point " \
           f"{inp['quantization']['zero_point']})" if inp.get("quantization") else ""
    # NormalizationOptions work on 0-255 pixel values: (pixel - mean) / std, i.e. our mean/std times 255
    mean = [round(m / norm["scale"], 4) for m in norm["mean"]]
    std = [round(s / norm["scale"], 4) for s in norm["std"]]
    image = mi.InputImageTensorMd(
        name=inp["name"], color_space_type=fb.ColorSpaceType.RGB,
        description=(f"one person crop, {h}x{w} (HxW) RGB, NHWC {inp['dtype']}{q_in}; "
                     + ("pixels 0-255 (normalization folded into the model)" if folded else
                        f"(pixel - mean) / std with mean {mean}, std {std} on 0-255 pixels "
                        f"(= (pixel/255 - {list(norm['mean'])}) / {list(norm['std'])})")),
        norm_mean=None if folded else mean, norm_std=None if folded else std,
        tensor_type=_tensor_type(schema, "float32" if inp.get("quantization") else inp["dtype"])).create_metadata()
    if folded:  # the value range of raw pixels (InputImageTensorMd fills it only for normalized float input)
        image.stats.min, image.stats.max = [0.0], [255.0]
    q_out = f", int8 quantized (scale {out['quantization']['scale']:.6g}, zero point " \
            f"{out['quantization']['zero_point']})" if out.get("quantization") else ""
    heat = mi.TensorMd(
        name=out["name"], content_type=fb.ContentProperties.FeatureProperties,
        description=(f"{j} keypoint heatmaps, NHWC (1, {h // stride}, {w // stride}, {j}), stride {stride} "
                     f"(heatmap pixel x covers input pixels [{stride}x, {stride}x+{stride - 1}]; input coordinate = "
                     f"(x + 0.5) * {stride} - 0.5){q_out}; channel k is keypoint k of {NAMES_FILE}; the argmax is "
                     f"the keypoint, its value the confidence"),
        associated_files=[mi.AssociatedFileMd(NAMES_FILE, "keypoint name of each heatmap channel, in order",
                                              fb.AssociatedFileType.TENSOR_AXIS_LABELS)]).create_metadata()
    model = mi.GeneralMd(name=f["name"], version=f["version"], description=f["description"], author=f["author"],
                         licenses=f["license"]).create_metadata()
    model.associatedFiles = [
        _assoc(fb, SKELETON_FILE, "skeleton and left/right flip pairs: 0-based keypoint index pairs",
               fb.AssociatedFileType.DESCRIPTIONS),
        _assoc(fb, FACTS_FILE, "every fact of this artifact (source checkpoint and arch sha256, input, output, "
                               "normalization, keypoints) as JSON", fb.AssociatedFileType.DESCRIPTIONS)]
    outputs = [heat]
    if f.get("keypoints"):  # a decoded file (issue 28): its second output, after the heatmaps
        kp = f["keypoints"]
        outputs.append(mi.TensorMd(
            name="keypoints", content_type=fb.ContentProperties.FeatureProperties,
            description=(f"(1, {j}, 3) float32: per keypoint (x, y, score); x, y in input-crop pixels of the {h}x{w} "
                         f"(HxW) input (pixel centres: pixel i is at coordinate i), score = the heatmap peak; "
                         f"row k is keypoint k of {NAMES_FILE}; decoded in the graph: {kp.get('rule', '')}"),
            associated_files=[mi.AssociatedFileMd(NAMES_FILE, "keypoint name of each row, in order",
                                                  fb.AssociatedFileType.TENSOR_AXIS_LABELS)]).create_metadata())
    sub = fb.SubGraphMetadataT()
    sub.inputTensorMetadata, sub.outputTensorMetadata = [image], outputs
    model.subgraphMetadata = [sub]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)
    files = {NAMES_FILE: ("\n".join(f["keypoint_names"]) + "\n").encode(),
             SKELETON_FILE: json.dumps({"keypoint_names": f["keypoint_names"], "skeleton": f["skeleton"],
                                        "flip_pairs": f["flip_pairs"]}).encode(),
             FACTS_FILE: json.dumps(f, indent=1).encode()}
    return bytes(b.Output()), files


def write_tflite_metadata(path, f: dict) -> Path:
    """Populate the metadata and its associated files into the .tflite at `path` (replacing any earlier ones),
    written atomically."""
    _, _, metadata, _ = _lib()
    path = Path(path)
    buf, files = metadata_buffer(f)
    before = _outputs(path)
    pop = metadata.MetadataPopulator.with_model_buffer(inline_buffers(_strip(path.read_bytes())))
    pop.load_metadata_buffer(buf)
    pop.load_associated_file_buffers(files)
    pop.populate()
    with atomic_path(path) as tmp:
        tmp.write_bytes(pop.get_model_buffer())
        after = _outputs(tmp)
        if not all(np.array_equal(a, b) for a, b in zip(before, after)):
            raise UserError(f"{path}: adding TFLite metadata changed the model's output (tflite-support's schema "
                            f"dropped a field this model uses); the file is left as it was")
    return path


def _outputs(path) -> list[np.ndarray]:
    """The model's output on two fixed inputs (a guard: metadata must not change what the model computes)."""
    from runtime import tflite

    it = tflite.interpreter(path, kernels="builtin")
    d = tflite.io_details(it)
    shape = d["inputs"][0]["shape"]
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-2, 2, shape).astype(np.float32) for _ in range(2)]
    if len(d["outputs"]) > 1:  # a decoded file: every output of its signature (float I/O)
        run = it.get_signature_runner(tflite.SIGNATURE)
        return [y for x in xs for _, y in sorted(run(**{d["inputs"][0]["name"]: x}).items())]
    return [tflite.run(it, x) for x in xs]


def _strip(model: bytes) -> bytes:
    """The model without the zip of associated files an earlier populate appended (the populator would otherwise
    demand the old files again)."""
    import zipfile
    from io import BytesIO

    try:
        with zipfile.ZipFile(BytesIO(model)) as z:
            start = min((i.header_offset for i in z.infolist()), default=None)
    except zipfile.BadZipFile:
        return model
    return model[:start] if start else model


def displayer(path):
    """tflite-support's MetadataDisplayer for the file (a UserError when the file has no metadata)."""
    _, _, metadata, _ = _lib()
    try:
        return metadata.MetadataDisplayer.with_model_file(str(path))
    except ValueError as e:
        raise UserError(f"{path}: no TFLite metadata ({str(e).splitlines()[0]})") from None


def read_tflite_metadata(path) -> dict:
    """Facts from the standard fields, read with MetadataDisplayer: normalization (NormalizationOptions; absent =
    folded), color space, keypoint names (the output's TENSOR_AXIS_LABELS file), skeleton (skeleton.json); the
    input/output shapes, dtypes and quantization from the model's own tensors; the stride from the two shapes."""
    from runtime import tflite

    path = Path(path)
    d = displayer(path)
    md = json.loads(d.get_metadata_json())
    try:
        sub = md["subgraph_metadata"][0]
        tin, tout = sub["input_tensor_metadata"][0], sub["output_tensor_metadata"][0]
    except (KeyError, IndexError):
        raise UserError(f"{path}: TFLite metadata: subgraph_metadata lacks input/output tensor metadata") from None
    norm_unit = next((u["options"] for u in tin.get("process_units", [])
                      if u.get("options_type") == "NormalizationOptions"), None)
    color = tin.get("content", {}).get("content_properties", {}).get("color_space", "RGB")
    if color not in ("RGB", "BGR"):
        raise UserError(f"{path}: TFLite metadata: input color_space {color!r} (expected RGB or BGR)")
    if norm_unit:
        mean, std = norm_unit["mean"], norm_unit["std"]
        if len(mean) == 1:
            mean, std = mean * 3, std * 3
        norm = {"color": color, "scale": 1 / 255, "mean": [round(m / 255, 6) for m in mean],
                "std": [round(s / 255, 6) for s in std],
                "folded": False}
    else:
        norm = {"color": color, "scale": 1 / 255, "mean": [0.0] * 3, "std": [1 / 255] * 3, "folded": True}
    label = next((a["name"] for a in tout.get("associated_files", []) if a.get("type") == "TENSOR_AXIS_LABELS"),
                 None)
    if label is None:
        raise UserError(f"{path}: TFLite metadata: the output has no TENSOR_AXIS_LABELS file (keypoint names)")
    names = [n for n in d.get_associated_file_buffer(label).decode().splitlines() if n.strip()]
    files = d.get_packed_associated_file_list()
    skel = json.loads(d.get_associated_file_buffer(SKELETON_FILE)) if SKELETON_FILE in files else {}
    io = tflite.io_details(path)
    inp, out = io["inputs"][0], io["outputs"][0]
    _, h, w, _ = inp["shape"]
    _, hh, hw, j = out["shape"]
    if j != len(names):
        raise UserError(f"{path}: TFLite metadata: {len(names)} keypoint names for {j} heatmap channels")
    facts = json.loads(d.get_associated_file_buffer(FACTS_FILE)) if FACTS_FILE in files else {}
    kp, kernels = facts.get("keypoints"), facts.get("kernels")  # kernels: the converting host's record (issue 27)
    return {**({"keypoints": kp} if kp else {}), **({"kernels": kernels} if kernels else {}),
            "name": md.get("name"), "version": md.get("version"), "author": md.get("author"),
            "license": md.get("license"), "description": md.get("description"), "num_joints": j,
            "keypoint_names": names, "skeleton": skel.get("skeleton", []), "flip_pairs": skel.get("flip_pairs", []),
            "heatmap_stride": h // hh, "input_size": [h, w], "normalization": norm,
            "input": {**inp, "layout": "NHWC", "kind": "tensor"}, "output": {**out, "layout": "NHWC"}}
