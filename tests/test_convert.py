"""convert/quantize end to end on a small network (the tiny arch of the parity tests: MBV1 head, 64x48 input, joint
classifier fitted to real crops), shared with the other artifact tests (tests/app_artifacts.py): every artifact, the
manifest against its schema, parity of fp32 TFLite and ONNX, full-integer int8, Core ML metadata, resume, and
one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from posekit import export_tflite
from runtime import tflite, tflite_flatbuffer
from tests.app_artifacts import CALIB, copy_of

PY = sys.executable


def _reference(m):
    from model.checkpoint import load_checkpoint

    net, arch, _ = load_checkpoint(m["source"]["checkpoint"])
    return net, arch


@pytest.mark.slow(45)
def test_manifest_validates_and_lists_every_target(app_artifacts):
    import jsonschema

    from convert.targets import GROUPS
    from posekit.io import sha256_file
    from posekit.manifest import SCHEMA

    out, m = app_artifacts
    jsonschema.validate(m, json.loads(SCHEMA.read_text()))
    kinds = {(a["format"], a["precision"]) for a in m["artifacts"]}
    assert {("tflite", p) for p in ("fp32", "fp16", "int8", "int8-dynamic")} <= kinds
    assert {("coreml-mlprogram", p) for p in ("fp32", "fp16", "int8-weights", "palettized-8bit",
                                              "palettized-6bit")} <= kinds
    assert ("coreml-neuralnetwork", "fp32") in kinds and ("onnx", "fp32") in kinds
    assert len(m["artifacts"]) == len(GROUPS["all"])
    for a in m["artifacts"]:
        assert sha256_file(out / a["file"]) == a["sha256"]
    src = m["source"]
    assert src["random_init"] is False and src["checkpoint_sha256"] == sha256_file(src["checkpoint"])
    assert m["input_size"] == [64, 48] and m["num_joints"] == 17 and len(m["keypoint_names"]) == 17
    sel = m["int8_selection"]  # the default candidates, each scored
    assert len(sel["candidates"]) >= 2 and sel["chosen"] in [c["quantizer"] for c in sel["candidates"]]
    # a broken manifest is refused by the same schema
    bad = {**m, "artifacts": [{**m["artifacts"][0], "layout": "?", "inputs": [{"name": "image"}]}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads(SCHEMA.read_text()))


def test_tflite_fp32_matches_pytorch_and_int8_is_fully_integer(app_artifacts):
    from quantize.calibration import eval_batches

    out, m = app_artifacts
    net, arch = _reference(m)
    x = eval_batches(arch, n=2)
    with torch.no_grad():
        ref = np.concatenate([net(b).permute(0, 2, 3, 1).numpy() for b in x])
    arts = {a["precision"]: a for a in m["artifacts"] if a["format"] == "tflite"}
    fp32 = out / arts["fp32"]["file"]
    y = np.concatenate([tflite.run(tflite.interpreter(fp32), b.permute(0, 2, 3, 1).numpy()) for b in x])
    assert np.abs(y - ref).max() <= 1e-4 * (ref.max() - ref.min())
    a = arts["int8"]
    assert a["inputs"][0]["name"] == "image" and a["outputs"][0]["name"] == "heatmaps"
    assert a["inputs"][0]["dtype"] == "float32" and a["inputs"][0]["layout"] == "NHWC"
    int8 = out / a["file"]
    assert tflite_flatbuffer.float_compute_ops(int8) == {}
    ops8, opsf = tflite_flatbuffer.op_counts(int8), tflite_flatbuffer.op_counts(fp32)
    assert not {"SLICE", "TRANSPOSE_CONV"} & set(ops8)  # CONCATENATION: the interleave head's (model/deploy.py)
    assert {k: v for k, v in ops8.items() if k not in ("QUANTIZE", "DEQUANTIZE")} == opsf
    for xnn in (True, False):  # both kernel sets run it (what `make bench` times)
        it = tflite.interpreter(int8, kernels="xnnpack" if xnn else "builtin")
        q = np.concatenate([tflite.run(it, b.permute(0, 2, 3, 1).numpy())
                            for b in x])
        assert np.corrcoef(q.ravel(), ref.ravel())[0, 1] > 0.9


def test_onnx_checks_and_runs(app_artifacts):
    import onnx
    import onnxruntime as ort

    out, m = app_artifacts
    a = next(a for a in m["artifacts"] if a["format"] == "onnx")
    model = onnx.load(str(out / a["file"]))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    net, arch = _reference(m)
    x = torch.randn(1, 3, 64, 48)
    y = ort.InferenceSession(str(out / a["file"]), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    ref = net(x).detach().numpy()
    assert y[0].shape == tuple(a["outputs"][0]["shape"]) and np.abs(y[0] - ref).max() <= 1e-4 * np.ptp(ref)


def test_coreml_loads_with_metadata(app_artifacts):
    from posekit.coreml_import import ct

    out, m = app_artifacts
    for a in (a for a in m["artifacts"] if a["format"].startswith("coreml")):
        ml = ct.models.MLModel(str(out / a["file"]), skip_model_load=True)
        md = ml.user_defined_metadata
        assert json.loads(md["keypoint_names"]) == m["keypoint_names"], a["file"]
        assert json.loads(md["skeleton"]) == m["skeleton"] and md["heatmap_stride"] == "4"
        assert json.loads(md["normalization"])["std"] == m["normalization"]["std"]
        assert ml.author and ml.license and ml.short_description
        spec = ml.get_spec()
        assert [i.name for i in spec.description.input] == ["image"]
        image = spec.description.input[0].type.WhichOneof("Type") == "imageType"
        assert image == (a["inputs"][0]["kind"] == "image") == a["inputs"][0]["normalization_folded"]
    assert (out / "coreml" / "model.mlmodel").is_file()


def test_rerun_resumes_and_quantize_keeps_the_manifest(app_artifacts, root, tmp_path):
    out, m = app_artifacts
    out = copy_of(out, tmp_path / "art")
    before = {a["file"]: (out / a["file"]).stat().st_mtime_ns for a in m["artifacts"]}
    r = subprocess.run([PY, "-m", "quantize", "--ckpt", m["source"]["checkpoint"], "--calib", str(CALIB), "--out",
                        str(out)], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    m2 = json.loads((out / "manifest.json").read_text())
    assert {a["file"] for a in m2["artifacts"]} == set(before)  # quantize kept what convert wrote
    assert all((out / f).stat().st_mtime_ns == t for f, t in before.items())  # nothing redone: resumed


@pytest.mark.parametrize("argv, msg", [
    (["--targets", "tflite-int4"], "--targets 'tflite-int4': unknown"),
    (["--arch", "no_such_arch"], "no_such_arch: no such arch file and no shipped arch"),
    (["--ckpt", "missing.pt"], "missing.pt: no such checkpoint"),
    (["--input", "64by48"], "argument --input: expected HxW, e.g. 256x192, got '64by48'"),
])
def test_bad_input_is_one_line(argv, msg, tmp_path, capsys):
    from convert.cli import main

    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1 and err.startswith("error")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_unconvertible_op_names_op_and_module(tmp_path):
    """An op litert-torch cannot lower: the error names the aten op and the module path."""
    from torch import nn

    from convert.pipeline import _guard
    from posekit.errors import UserError

    class Odd(nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).real

    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.ReLU(), Odd())).eval()
    x = torch.randn(1, 3, 8, 6)
    with pytest.raises(UserError) as e:
        _guard(lambda: export_tflite.litert_to_tflite(net, x, tmp_path / "odd.tflite"), "tflite", net, x)
    assert "fft" in str(e.value) and "'1.1'" in str(e.value)
    assert not (tmp_path / "odd.tflite").exists()


def test_help(capsys):
    from convert.cli import main as convert_main
    from quantize.cli import main as quantize_main

    for main in (convert_main, quantize_main):
        assert main(["--help"]) == 0 and "--targets" in capsys.readouterr().out
