"""In-file metadata (runtime.metadata, runtime.tflite_metadata): every .tflite read back with tflite-support's
MetadataDisplayer (a reader we did not write) has the normalization, input size and keypoint names; ONNX
metadata_props and Core ML user-defined metadata carry the same facts; convert's manifest hashes the files as
written (with their metadata)."""

import json

import numpy as np
import pytest

from posekit.keypoints import COCO_KEYPOINTS, COCO_SKELETON, MEAN, STD


def test_tflite_metadata_read_by_tflite_support(app_artifacts):
    from posekit.io import sha256_file
    from posekit.skip_unused_deps import import_skipping
    from runtime import tflite

    # tflite-support's own reader (imported without the TensorFlow it only probes to open files)
    MetadataDisplayer = import_skipping("tensorflow_lite_support.metadata.python.metadata",
                                        ("tensorflow",)).MetadataDisplayer

    out, m = app_artifacts
    tfl = [a for a in m["artifacts"] if a["format"] == "tflite"]
    assert {a["precision"] for a in tfl} >= {"fp32", "fp16", "int8", "int8-dynamic"}
    for a in tfl:
        path = out / a["file"]
        assert sha256_file(path) == a["sha256"]  # the manifest hashes the file with its metadata
        d = MetadataDisplayer.with_model_file(str(path))
        md = json.loads(d.get_metadata_json())
        assert md["name"] == m["model"] and md["author"] and md["license"] == "Apache-2.0"
        assert md["version"].endswith(m["source"]["checkpoint_sha256"][:12])
        sub = md["subgraph_metadata"][0]
        tin, tout = sub["input_tensor_metadata"][0], sub["output_tensor_metadata"][0]
        assert tin["content"]["content_properties"]["color_space"] == "RGB"
        norm = next(u["options"] for u in tin["process_units"] if u["options_type"] == "NormalizationOptions")
        np.testing.assert_allclose(norm["mean"], np.array(MEAN) * 255, rtol=1e-5)
        np.testing.assert_allclose(norm["std"], np.array(STD) * 255, rtol=1e-5)
        # the value range: pixels 0 and 255 after normalization
        np.testing.assert_allclose(tin["stats"]["min"], -np.array(MEAN) / STD, rtol=1e-4)
        labels = next(f["name"] for f in tout["associated_files"] if f["type"] == "TENSOR_AXIS_LABELS")
        assert d.get_associated_file_buffer(labels).decode().split() == list(COCO_KEYPOINTS)
        assert "stride 4" in tout["description"] and "NHWC" in tout["description"]
        assert set(d.get_packed_associated_file_list()) == {labels, "skeleton.json", "posenas.json"}
        skel = json.loads(d.get_associated_file_buffer("skeleton.json"))
        assert skel["skeleton"] == [list(p) for p in COCO_SKELETON]
        facts = json.loads(d.get_associated_file_buffer("posenas.json"))
        # the input size in the metadata is the model's input tensor's
        h, w = facts["input_size"]
        assert [1, h, w, 3] == tflite.io_details(path)["inputs"][0]["shape"] == a["inputs"][0]["shape"]
        assert facts["checkpoint_sha256"] == m["source"]["checkpoint_sha256"]
        assert facts["arch_sha256"] == m["source"]["arch_sha256"] and facts["precision"] == a["precision"]
        assert f"{h}x{w}" in tin["description"]


def test_tflite_metadata_rewrite_keeps_the_model(app_artifacts, tmp_path):
    """Writing the metadata again replaces it, and the model computes exactly what it did."""
    import shutil

    from runtime import metadata, tflite

    out, m = app_artifacts
    a = next(a for a in m["artifacts"] if a["precision"] == "int8")
    p = tmp_path / "m.tflite"
    shutil.copy(out / a["file"], p)
    head = {k: v for k, v in m.items() if k != "artifacts"}
    x = np.random.default_rng(1).normal(size=a["inputs"][0]["shape"]).astype(np.float32)
    y0 = tflite.run(tflite.interpreter(p), x)
    metadata.embed(p, {**metadata.facts(head, a), "name": "renamed"})
    assert metadata.read(p)["name"] == "renamed"
    assert np.array_equal(tflite.run(tflite.interpreter(p), x), y0)


def test_onnx_and_coreml_metadata(app_artifacts):
    import onnx

    from posekit.coreml_import import ct

    out, m = app_artifacts
    onx = next(a for a in m["artifacts"] if a["format"] == "onnx")
    props = {p.key: p.value for p in onnx.load(str(out / onx["file"])).metadata_props}
    assert json.loads(props["keypoint_names"]) == list(COCO_KEYPOINTS)
    assert json.loads(props["skeleton"]) == [list(p) for p in COCO_SKELETON]
    assert json.loads(props["normalization"])["mean"] == list(MEAN)
    assert json.loads(props["normalization"])["folded"] is False
    assert props["heatmap_stride"] == "4" and json.loads(props["input_size"]) == m["input_size"]
    assert props["checkpoint_sha256"] == m["source"]["checkpoint_sha256"] and props["input_layout"] == "NCHW"
    cm = next(a for a in m["artifacts"] if a["format"] == "coreml-mlprogram")
    ml = ct.models.MLModel(str(out / cm["file"]), skip_model_load=True)
    md = ml.user_defined_metadata
    assert json.loads(md["keypoint_names"]) == list(COCO_KEYPOINTS)
    assert json.loads(md["skeleton"]) == [list(p) for p in COCO_SKELETON]
    assert json.loads(md["normalization"])["folded"] is True  # ImageType input: pixels 0-255
    assert md["arch_sha256"] == m["source"]["arch_sha256"] and ml.version.startswith(m["model"])


def test_unknown_file_and_missing_metadata_are_one_line_errors(tmp_path):
    from posekit.errors import UserError
    from runtime import metadata

    p = tmp_path / "x.bin"
    p.write_bytes(b"0")
    with pytest.raises(UserError, match="x.bin: not a model file"):
        metadata.read(p)
    with pytest.raises(UserError, match="no such model file"):
        metadata.read(tmp_path / "none.tflite")


def test_reading_artifacts_skips_the_libraries_coremltools_and_tflite_support_only_probe(app_artifacts):
    """Checking and reading every artifact (what parity, predict and bench do first) imports neither TensorFlow
    (~8 s a process), scikit-learn nor torchao: coremltools and tflite-support import them at their own import only
    to offer features posenas does not use (posekit.skip_unused_deps). The skip ends with that import: a later
    `import sklearn` (coremltools' k-means palettization does one) still works."""
    import subprocess
    import sys

    out, m = app_artifacts
    files = [str(out / a["file"]) for a in m["artifacts"]]
    assert {a["format"].split("-")[0] for a in m["artifacts"]} >= {"tflite", "onnx", "coreml"}
    code = ("import sys\n"
            "from runtime.artifact_check import check_artifact\n"
            "from runtime import metadata\n"
            "for f in sys.argv[1:]:\n"
            "    check_artifact(f); metadata.read(f)\n"
            "print(sorted(m for m in ('tensorflow', 'sklearn', 'torchao') if m in sys.modules))\n"
            "import sklearn.cluster\n"
            "print('later import ok')\n")
    r = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["[]", "later import ok"]
