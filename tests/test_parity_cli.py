"""`python -m parity` end to end on a small real artifact set (TFLite, ONNX, Core ML fp32 and int8-weights) run on
the bundled COCO crops, with three deliberately broken copies (.tflite, .onnx, Core ML weights) that must fail, be
named, and be located."""

import json

import pytest
import torch

from tests.app_artifacts import copy_of
from tests.parity_helpers import add_broken, run_parity

KINDS = {("tflite", "fp32"), ("onnx", "fp32"), ("coreml-mlprogram", "fp32"), ("coreml-mlprogram", "int8-weights")}


@pytest.fixture(scope="module")
def artifacts(app_artifacts, tmp_path_factory):
    """convert's own artifacts (tflite fp32, onnx, Core ML fp32 and int8-weights) of the shared tiny model, copied."""
    root = copy_of(app_artifacts[0], tmp_path_factory.mktemp("parity") / "tiny",
                   lambda a: (a["format"], a["precision"]) in KINDS and "tensor" not in a["file"])
    clean = [a["file"] for a in json.loads((root / "manifest.json").read_text())["artifacts"]]
    return root, clean, add_broken(root)


@pytest.fixture(scope="module")
def numeric_rules():
    """The default thresholds: the tiny net, fitted to 30 train images, scores an AP near 0 on the val crops parity
    uses, so its keypoint rules are reported as not applicable (the report says why) and the numeric and
    conversion-fidelity rules gate: a broken Core ML int8 scale fails weights_exact."""
    from parity.metrics import THRESHOLDS

    return str(THRESHOLDS)


def test_broken_artifacts_fail_and_are_named(artifacts, numeric_rules, capsys):
    root, clean, broken = artifacts
    rc, out = run_parity(["--model-dir", str(root), "--crops", "3", "--thresholds", numeric_rules], capsys)
    assert rc == 1
    for f, _ in broken.values():
        assert f"FAIL {f}" in out.err
    for f in clean:
        assert f"FAIL {f}" not in out.err
    rep = json.loads((root / "parity/report.json").read_text())
    rows = {r["file"]: r for r in rep["rows"]}
    assert {f for f, r in rows.items() if r["status"] == "pass"} == set(clean)
    assert {rows[f]["format"] for f in clean} >= {"tflite", "onnx", "coreml-mlprogram"}
    for r in rows.values():
        if r["format"].startswith("coreml"):
            assert "reference executor" in r["engine"]
        if r["precision"] == "fp32" and r["file"] in clean:
            assert r["max_abs_rel"] <= 1e-4
    # The first diverging layer: the flipped tensors are the stem conv's (.tflite) and block 0's projection (.onnx);
    # the changed scale belongs to the first dequantized weight of the Core ML program.
    f, _ = broken["tflite"]
    assert rows[f]["fails"][0].startswith("max_abs_rel")
    loc = rows[f]["first_divergence"]
    assert loc["op"] == "CONV_2D" and loc["torch_module"].startswith("backbone.stem.0")
    loc = rows[broken["onnx"][0]]["first_divergence"]
    assert loc["op"] == "Conv" and loc["torch_module"].startswith("backbone.blocks.0.conv.2")
    f, op = broken["coreml-mlprogram"]  # e.g. 'net_backbone_blocks_2_conv_2_0_weight_to_fp16_quantized'
    module = op.removeprefix("net_").split("_weight")[0].replace("_", ".")
    assert rows[f]["first_divergence"]["torch_module"].startswith(module.rsplit(".", 1)[0]), (module, rows[f])
    assert rep["warnings"] and "AP" in rep["warnings"][0]  # AP near 0: the report says parity means little
    html = (root / "parity/report.html").read_text()
    for r in rep["rows"]:
        assert r["file"] in html
        assert (root / "parity" / r["figures"]["histogram"]).is_file()
        assert (root / "parity" / r["figures"]["overlay"]).is_file()


def test_clean_artifacts_pass(artifacts, numeric_rules, capsys):
    root, clean, _ = artifacts
    rc, out = run_parity(["--model-dir", str(root), "--crops", "3", "--only", "model", "--thresholds", numeric_rules],
                    capsys)
    assert rc == 0, out.err
    assert out.out.count("PASS") == len(clean) >= 4


def test_bad_input_is_one_line(artifacts, capsys, tmp_path):
    root, _, _ = artifacts
    rc, out = run_parity(["--model-dir", str(tmp_path)], capsys)
    assert rc == 2 and out.err.strip().startswith("error:") and "manifest" in out.err
    bad = tmp_path / "t.yaml"
    bad.write_text("fp32: {max_abs_rel: '< 1'}\n")
    rc, out = run_parity(["--model-dir", str(root), "--thresholds", str(bad)], capsys)
    assert rc == 2 and "fp32.max_abs_rel" in out.err
    # a --only that matches nothing: refused before the reference runs, no report written or overwritten
    before = sorted(p.name for p in (root / "parity").glob("*")) if (root / "parity").is_dir() else []
    rc, out = run_parity(["--model-dir", str(root), "--only", "no-such-artifact"], capsys)
    assert rc == 2 and "matches no artifact" in out.err
    assert (sorted(p.name for p in (root / "parity").glob("*")) if (root / "parity").is_dir() else []) == before


def test_unknown_coreml_op_fails_the_artifact_naming_it(artifacts, capsys, tmp_path):
    """An artifact holding an op the Core ML executor lacks fails (exit 1) with the op's name: never skipped."""
    import shutil

    from posekit.coreml_import import ct

    class Gelu(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.gelu(x)

    root, _, _ = artifacts
    d = tmp_path / "m"
    shutil.copytree(root, d, ignore=shutil.ignore_patterns("parity"))
    x = torch.zeros(1, 3, 8, 8)
    ct.convert(torch.jit.trace(Gelu().eval(), x), inputs=[ct.TensorType(name="image", shape=x.shape)],
               convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16).save(str(d / "coreml/gelu.mlpackage"))
    man = json.loads((d / "manifest.json").read_text())
    entry = next(a for a in man["artifacts"] if a["format"] == "coreml-mlprogram")
    entry["inputs"][0].update(kind="tensor", dtype="float32", normalization_folded=False)
    from posekit.io import sha256_file

    man["artifacts"].append({**entry, "file": "coreml/gelu.mlpackage",
                             "sha256": sha256_file(d / "coreml/gelu.mlpackage")})
    (d / "manifest.json").write_text(json.dumps(man))
    rc, out = run_parity(["--model-dir", str(d), "--crops", "2", "--only", "gelu"], capsys)
    assert rc == 1
    assert "FAIL coreml/gelu.mlpackage" in out.err and "gelu" in out.err.split("FAIL coreml/gelu.mlpackage")[1]
