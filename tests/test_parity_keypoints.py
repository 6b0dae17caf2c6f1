"""Parity of decoded files (issue 28): a decoded ONNX file of the right decode passes on its in-file keypoints, one
built with a wrong stride or without the quarter shift fails (parity/keypoints.py, thresholds.yaml keypoints-*)."""

import json

import pytest

from model.checkpoint import save_checkpoint
from model.decode import KeypointDecode
from posekit import manifest
from posekit.export_onnx import export_onnx
from tests.parity_helpers import INPUT, fitted_tiny_net, run_parity, tiny_arch, write_manifest


@pytest.mark.slow(30)
def test_wrong_decode_fails_keypoint_parity(tmp_path, capsys, one_thread):
    net, arch = fitted_tiny_net().eval(), tiny_arch()
    ckpt = save_checkpoint(tmp_path / "tiny.pt", net, arch)
    entries = []
    for name, kw in (("right", {}), ("stride8", {"stride": 8}), ("noshift", {"shift": 0.0})):
        path, ins, outs, _ = export_onnx(KeypointDecode(net, INPUT, **kw).eval(), arch,
                                         tmp_path / f"{name}_kp.onnx", ("heatmaps", "keypoints"))
        entries.append(manifest.artifact(tmp_path, path, "onnx", "fp32", None, ins, outs))
    write_manifest(tmp_path, arch, entries, ckpt)
    rc, out = run_parity(["--model-dir", str(tmp_path), "--crops", "4", "--no-locate"], capsys)
    rows = {r["file"]: r for r in json.loads((tmp_path / "parity" / "report.json").read_text())["rows"]}
    assert rc == 1, out
    assert rows["right_kp.onnx"]["status"] == "pass", rows["right_kp.onnx"]["fails"]
    assert rows["right_kp.onnx"]["kp_decode_max_px"] == 0
    for bad in ("stride8_kp.onnx", "noshift_kp.onnx"):
        assert rows[bad]["status"] == "fail"
        assert any(f.startswith("kp_decode_max_px") for f in rows[bad]["fails"]), rows[bad]["fails"]
        assert rows[bad]["kp_decode_max_px"] >= 0.9  # a keypoint moved by at least one input pixel
