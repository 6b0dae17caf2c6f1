"""Parity you can trust: conversion fidelity against the artifact's twin (runtime.tflite_twin), keypoint rules judged
separately, and verdicts tied to the artifact's bytes. Tiny nets at 64x48 on the bundled COCO crops."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from parity import metrics
from tests.parity_helpers import (
    INPUT,
    _entry,
    _tflite_ops,
    change_coreml_palette_entry,
    change_tflite_weight_scale,
    compress,
    coreml_convert,
    fitted_tiny_net,
    run_parity,
    tiny_arch,
    write_manifest,
)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A tiny net's checkpoint, its int8 .tflite (calibrated on real crops, as convert makes it), the same int8 file
    with ONE per-channel weight scale of the joint classifier rescaled, a Core ML 8-bit palettized model and a copy
    with one palette entry moved; all in one manifest."""
    from model.checkpoint import save_checkpoint
    from model.deploy import deploy_model
    from model.rewrites import FORMAT_REWRITE
    from posekit.export_tflite import litert_to_tflite
    from quantize.calibration import calibration_batches
    from quantize.tflite import quantize_tflite

    root = tmp_path_factory.mktemp("fidelity") / "tiny"
    (root / "tflite").mkdir(parents=True)
    (root / "coreml").mkdir()
    net, arch = fitted_tiny_net(), tiny_arch()
    ckpt = save_checkpoint(root / "model.pt", net, arch)
    dep = deploy_model(net)
    litert_to_tflite(dep, torch.zeros(1, 3, *INPUT), root / "tflite/model_fp32.tflite")
    quantize_tflite(root / "tflite/model_fp32.tflite", root / "tflite/model_int8.tflite", "int8",
                    calibration_batches(arch, None, 8))
    quantize_tflite(root / "tflite/model_fp32.tflite", root / "tflite/model_int8_dynamic.tflite", "int8-dynamic")
    changed = _rescaled_joint(root / "tflite/model_int8.tflite", root / "tflite/scale_int8.tflite")
    (root / "tflite/other_int8.tflite").write_bytes((root / "tflite/model_int8.tflite").read_bytes())
    m = coreml_convert(deploy_model(net, FORMAT_REWRITE["coreml-mlprogram"]), root / "coreml/model_fp32.mlpackage",
                       "fp16")  # the graph convert ships as Core ML
    compress(m, "palettized-8bit", root / "coreml/model_pal8.mlpackage")
    entry = change_coreml_palette_entry(root / "coreml/model_pal8.mlpackage", root / "coreml/entry_pal8.mlpackage")
    entries = [_entry(root, "tflite/model_fp32.tflite", "tflite", "fp32", "NHWC"),
               _entry(root, "tflite/model_int8.tflite", "tflite", "int8", "NHWC", "ai-edge-quantizer static_wi8_ai8"),
               _entry(root, "tflite/scale_int8.tflite", "tflite", "int8", "NHWC", "ai-edge-quantizer static_wi8_ai8"),
               # the same bytes listed as another quantizer's file: no exact twin is claimed for a graph it does
               # not model, and the file is judged per op
               _entry(root, "tflite/other_int8.tflite", "tflite", "int8", "NHWC", "pt2e (torch.ao)"),
               _entry(root, "tflite/model_int8_dynamic.tflite", "tflite", "int8-dynamic", "NHWC"),
               _entry(root, "coreml/model_pal8.mlpackage", "coreml-mlprogram", "palettized-8bit"),
               _entry(root, "coreml/entry_pal8.mlpackage", "coreml-mlprogram", "palettized-8bit")]
    write_manifest(root, arch, entries, ckpt)
    return root, changed, entry


KEYPOINT_CROPS = 6  # val persons the keypoint rules of test (a) are judged on (parity --crops)
RESCALE_FACTORS = (0.5, 2.0, 0.4, 2.5, 0.3, 3.0)  # each far enough from 1 to fail conversion fidelity
# What the chosen change must do to the output parity compares with the twin, with a margin to the test's bars
# (in-step < 0.99, SQNR < 30 dB): the correct file stands in for the changed file's twin here, and the two differ
# by the twin's own rounding of the weights at the changed scale.
VISIBLE_IN_STEP, VISIBLE_SQNR_DB = 0.97, 25.0


def _val_run(path) -> tuple[np.ndarray, np.ndarray]:
    """What a .tflite gives parity's first KEYPOINT_CROPS val persons: their keypoints, decoded as parity decodes
    them (posekit.evaluate, GT boxes, flip test), and the file's outputs on the crops parity's conversion-fidelity
    check sees (its first FIDELITY_CROPS inputs: the same evaluate call, so the same crops in the same order)."""
    from parity.compare_artifacts import FIDELITY_CROPS
    from posekit.evaluate import evaluate_model
    from posekit.keypoints import DEFAULT_COCO
    from runtime import tflite

    it, outs = tflite.interpreter(path), []

    def fn(x):  # the file takes one crop at a time
        y = np.concatenate([tflite.run(it, np.ascontiguousarray(c.transpose(1, 2, 0))[None]) for c in x])
        outs.append(y)
        return y.transpose(0, 3, 1, 2)

    kp = evaluate_model(fn, DEFAULT_COCO, "val2017", INPUT, boxes="gt", flip=True, num_joints=17,
                        limit=KEYPOINT_CROPS, batch_size=8, return_keypoints=True)["keypoints"][..., :2]
    return kp, np.concatenate(outs)[:FIDELITY_CROPS]


def _output_step(path) -> float:
    """The quantization step of the joint classifier's int8 output (the last CONV_2D's output tensor)."""
    buf = bytearray(Path(path).read_bytes())
    _, g, ops = _tflite_ops(buf)
    last = [i for i, name in enumerate(ops) if name == "CONV_2D"][-1]
    return float(g.Tensors(int(g.Operators(last).OutputsAsNumpy()[0])).Quantization().ScaleAsNumpy()[0])


def _rescaled_joint(src, dst) -> dict:
    """`src` with the per-channel weight scale of one output channel of the joint classifier (the last conv)
    multiplied by a factor far from 1: the first (factor, joint) whose decoded keypoints on the evaluated persons
    stay where the correct file puts them while its output on the fidelity crops moves well past one step.
    Rescaling keeps a heatmap's peak in exact arithmetic, but int8 rounding flips a tiny net's near-tied cells;
    and a joint whose heatmap is nearly flat on the fidelity crops keeps its keypoints only because the change
    hardly shows. Which joints do either depends on the net, hence on the CPU that fitted it (CI saw both): this
    picks, on any machine, a change the keypoint rules provably cannot see and conversion fidelity must."""
    from runtime.tflite_twin import compare_outputs

    ref, ref_out = _val_run(src)
    again, _ = _val_run(src)
    assert np.array_equal(again, ref, equal_nan=True), \
        f"the same file decodes differently twice in this process (max |d| {np.nanmax(np.abs(again - ref))} px)"
    step, tried = _output_step(src), []
    for factor in RESCALE_FACTORS:
        for channel in range(17):
            cand = dst.with_name(f"cand-{factor}-{channel}.tflite")  # a new file each: no runtime sees an old one
            changed = change_tflite_weight_scale(src, cand, op_index=-1, channel=channel, factor=factor)
            kp, out = _val_run(cand)
            seen = compare_outputs(out, ref_out, step)
            if np.array_equal(kp, ref, equal_nan=True) and seen["in_step"] < VISIBLE_IN_STEP \
                    and seen["sqnr_db"] < VISIBLE_SQNR_DB:
                cand.replace(dst)
                return {**changed, "channel": channel, "factor": factor}
            tried.append((factor, channel, int((np.abs(kp - ref) > 0).any(-1).sum()), round(seen["in_step"], 3),
                          round(seen["sqnr_db"], 1)))
            cand.unlink()
    raise AssertionError(f"no rescaled joint keeps every keypoint and moves the output: (factor, joint, keypoints "
                         f"moved, in-step, SQNR dB) per try: {tried}")


def _rows(root):
    """report.json's rows, with JSON's "inf" (an exact match's SQNR) read back as a float."""
    rows = json.loads((root / "parity/report.json").read_text())["rows"]
    return {r["file"]: {k: float(v) if v == "inf" else v for k, v in r.items()} for r in rows}


@pytest.mark.slow(20)
def test_changed_requantization_scale_fails_fidelity_though_keypoint_rules_pass(quantized, capsys):
    """(a) One per-channel weight scale of the joint classifier (the last conv) rescaled, its int8 values untouched:
    the runtime requantizes that joint's heatmap with a wrong scale; the twin, which rounds the PyTorch weights with
    the file's scales, does not. Every decoded keypoint stays where the correct file puts it (the fixture picks
    such a joint: see _rescaled_joint), so the keypoint figures are the correct file's to the last digit and the
    keypoint rules alone give it the correct file's verdict, while the conversion-fidelity rules fail and name the
    op: the split catches what task metrics miss. (This tiny net's reference AP is below 0.3, so parity reports
    its keypoint rules as not applicable; on the demo's trained net such a file passes them.)"""
    root, changed, _ = quantized
    rc, out = run_parity(["--model-dir", str(root), "--crops", str(KEYPOINT_CROPS), "--only", "int8"], capsys)
    assert rc == 1, out.err
    rows = _rows(root)
    good, bad = rows["tflite/model_int8.tflite"], rows["tflite/scale_int8.tflite"]
    # the correct file: its XNNPACK-exact twin computes every int8 output value, every stored integer included;
    # per op against the builtin-kernel twin, to the requantization rounding
    assert good["status"] == "pass", good["fails"]
    assert "XNNPACK-exact" in good["fidelity_twin"] and good["fidelity_identical"] == 1.0
    assert good["fidelity_sqnr_db"] >= 40 and good["fidelity_in_step"] >= 0.99 and good["weights_exact"] == 1
    assert good["fidelity_op_sqnr_db"] >= 40 and good["fidelity_op_in_step"] >= 0.99
    assert good["fidelity_graph_sqnr_db"] >= 60
    # int8-dynamic: the twin quantizes each hybrid conv's input on the fly, as the runtime's kernels do
    dyn = rows["tflite/model_int8_dynamic.tflite"]
    assert dyn["status"] == "pass", dyn["fails"]
    assert dyn["fidelity_sqnr_db"] >= 60 and dyn["weights_exact"] == 1 and dyn["fidelity_in_step"] is None
    # the changed file: conversion fidelity fails, and the first op the twin disagrees with is the changed conv
    assert bad["status"] == "fail"
    assert bad["fails"] and all(f.startswith(metrics.FIDELITY_PREFIX) for f in bad["fails"]), bad["fails"]
    assert bad["fidelity_in_step"] < 0.99 and bad["fidelity_sqnr_db"] < 30 and bad["fidelity_op_sqnr_db"] < 30
    assert bad["fidelity_divergence"]["op"] == changed["op"] == bad["fidelity_worst_op"]["op"]
    assert "FAIL tflite/scale_int8.tflite" in out.err and "conversion fidelity" in out.err
    other = rows["tflite/other_int8.tflite"]
    assert other["status"] == "pass" and other["fidelity_op_sqnr_db"] >= 30 and other.get("fidelity_sqnr_db") is None
    assert any(n.startswith("fidelity_sqnr_db") and "judged per op" in n for n in other["not_applicable"])
    # ... while the keypoint rules alone give it the correct file's verdict: its figures are the correct file's
    rules = metrics.load_thresholds()["int8"]
    keypoint_rules = {k: v for k, v in rules.items() if k in metrics.KEYPOINT_METRICS}
    assert set(keypoint_rules) == {"oks_agreement", "dap"}
    assert (bad["oks_agreement"], bad["dap"], bad["num_persons"]) == (good["oks_agreement"], good["dap"],
                                                                      good["num_persons"])
    assert metrics.check(bad, keypoint_rules) == metrics.check(good, keypoint_rules)
    assert metrics.check(bad, {"sqnr_db": rules["sqnr_db"]}) == ([], [])  # the numeric floor passes it too
    # untrained reference: the keypoint rules are reported as not applicable, and say why
    assert good["not_applicable"] and "reference AP" in good["not_applicable"][0]
    assert "keypoint rules not applicable" in out.out


def test_changed_palette_entry_fails_fidelity(quantized, capsys):
    """(c) One palette entry of a Core ML 8-bit palettized model moved: its decompressed weights are no longer the
    PyTorch weights projected onto the file's palette."""
    root, _, entry = quantized
    rc, out = run_parity(["--model-dir", str(root), "--crops", "2", "--only", "pal8"], capsys)
    assert rc == 1
    rows = _rows(root)
    good, bad = rows["coreml/model_pal8.mlpackage"], rows["coreml/entry_pal8.mlpackage"]
    assert good["weights_exact"] == 1 and not any(f.startswith(metrics.FIDELITY_PREFIX) for f in good["fails"])
    assert good["status"] == "pass", good["fails"]
    assert bad["status"] == "fail" and bad["weights_exact"] < 1
    assert any(f.startswith(metrics.FIDELITY_PREFIX + "weights_exact") for f in bad["fails"])
    assert bad["fidelity_divergence"]["tensor"] == entry


def test_tampered_after_cached_run_fails_naming_the_sha(quantized, capsys, tmp_path):
    """(b) Run parity (results cached), flip 64 bytes in the middle of the fp32 .tflite, run again: the row fails
    as changed since convert, though a cached result for the old bytes exists."""
    import shutil

    root, _, _ = quantized
    d = tmp_path / "m"
    shutil.copytree(root, d, ignore=shutil.ignore_patterns("parity"))
    rc, out = run_parity(["--model-dir", str(d), "--crops", "2", "--only", "tflite/model_fp32"], capsys)
    assert rc == 0, out.err
    f = d / "tflite/model_fp32.tflite"
    raw = bytearray(f.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    f.write_bytes(bytes(raw))
    rc, out = run_parity(["--model-dir", str(d), "--crops", "2", "--only", "tflite/model_fp32"], capsys)
    assert rc == 1
    assert "FAIL tflite/model_fp32.tflite" in out.err and "changed since convert" in out.err and "sha256" in out.err
    row = _rows(d)["tflite/model_fp32.tflite"]
    assert row["status"] == "fail" and row["sha256"] != row["manifest_sha256"]


def test_a_results_cache_inside_a_received_folder_is_never_read(quantized, capsys, tmp_path):
    """A folder someone sends may carry parity/cache entries that claim any figure. Our own cache is read back (the
    planted figure shows: the cache is live), the same entry in a copy of the folder is not (re-measured)."""
    import shutil

    def plant(cache):
        n = 0
        for f in cache.glob("*.json"):
            d = json.loads(f.read_text())
            if "max_abs" in d and not f.name.startswith("ref-"):  # an artifact's figures: claim a huge error
                f.write_text(json.dumps({**d, "max_abs": 1e9}))
                n += 1
        return n

    root, _, _ = quantized
    ours, sent = tmp_path / "ours", tmp_path / "sent"
    shutil.copytree(root, ours, ignore=shutil.ignore_patterns("parity"))
    args = ["--crops", "2", "--only", "tflite/model_fp32"]
    assert run_parity(["--model-dir", str(ours), *args], capsys)[0] == 0
    shutil.copytree(ours, sent)  # what a sender packs and we unpack, cache included
    assert plant(ours / "parity" / "cache") == 1 and plant(sent / "parity" / "cache") == 1
    run_parity(["--model-dir", str(ours), *args], capsys)
    assert _rows(ours)["tflite/model_fp32.tflite"]["max_abs"] == 1e9  # our own cache: read back as it is
    rc, out = run_parity(["--model-dir", str(sent), *args], capsys)
    assert rc == 0, out.err
    assert _rows(sent)["tflite/model_fp32.tflite"]["max_abs"] < 1e-3  # the sent one: re-measured


def test_fake_quant_rounds_like_tflite():
    """The primitive QAT reuses: ties away from zero (torch.round rounds them to even), clamp to the int8 range,
    per-channel scales, straight-through gradient inside the range."""
    from runtime.tflite_twin import fake_quant, quantize_weight, round_half_away

    assert round_half_away(torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5])).tolist() == [1, 2, 3, -1, -3]
    x = torch.tensor([0.25, 0.75, -0.25, 100.0, -100.0])
    assert fake_quant(x, 0.5, 0).tolist() == [0.5, 1.0, -0.5, 63.5, -64.0]
    w = torch.tensor([[1.0, -2.0], [0.3, 0.1]])
    assert quantize_weight(w, torch.tensor([2 / 127, 0.3 / 127]), axis=0).tolist() == [[64, -127], [127, 42]]
    x = torch.tensor([0.3, 200.0], requires_grad=True)
    fake_quant(x, 0.5, 0, ste=True).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]
    assert np.allclose(fake_quant(torch.tensor([[0.26], [0.26]]), torch.tensor([0.5, 0.1]), 0, axis=0).numpy(),
                       [[0.5], [0.3]])


@pytest.mark.parametrize("how", ["none", "subpixel"])
def test_coreml_weight_check_reads_the_shipped_graph_and_an_older_sub_pixel_file(how, tmp_path):
    """Core ML ships the head's own conv_transpose (model/rewrites.py); a file converted before, from the sub-pixel
    graph, is still read as that graph: every compressed weight bound to a conv of its graph and exact."""
    from model.deploy import deploy_model
    from runtime.tflite_twin import coreml_weight_check

    net = fitted_tiny_net()
    m = coreml_convert(deploy_model(net, how), tmp_path / "fp32.mlpackage", "fp32")
    compress(m, "int8-weights", tmp_path / "int8w.mlpackage")
    chk = coreml_weight_check(net, tmp_path / "int8w.mlpackage")
    assert chk["weights_exact"] == 1.0 and all(t["module"] for t in chk["tensors"]), chk["worst"]
    head = [t["module"] for t in chk["tensors"] if t["module"].startswith("head.up")]
    assert head and any(n.endswith(".conv") for n in head) == (how == "subpixel"), head  # SubPixelDeconv.conv
