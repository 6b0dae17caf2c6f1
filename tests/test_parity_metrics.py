"""Agreement metrics and the threshold rules, on heatmaps with known differences."""

import numpy as np
import pytest

from parity.metrics import THRESHOLDS, Agreement, check, load_thresholds
from posekit.errors import UserError


def _peaks(n=6, j=17, h=16, w=12, seed=0):
    """Gaussian heatmaps with one peak per joint at random cells, and those cells."""
    rng = np.random.default_rng(seed)
    cells = np.stack([rng.integers(1, w - 3, (n, j)), rng.integers(1, h - 1, (n, j))], -1)  # room to move
    ys, xs = np.mgrid[:h, :w]
    hm = np.exp(-((xs - cells[..., :1, None]) ** 2 + (ys - cells[..., 1:, None]) ** 2) / 4.0)
    return hm.reshape(n, j, h, w).astype(np.float32), cells


def test_identical_and_batched_equals_whole():
    ref, _ = _peaks()
    same = Agreement()
    same.update(ref, ref)
    r = same.result()
    assert r["max_abs"] == 0 and r["sqnr_db"] == float("inf") and r["argmax_same"] == 1 and r["pck"] == 1
    noisy = ref + np.random.default_rng(1).normal(0, 1e-3, ref.shape).astype(np.float32)
    whole, parts = Agreement(), Agreement()
    whole.update(ref, noisy)
    for i in range(0, len(ref), 4):
        parts.update(ref[i:i + 4], noisy[i:i + 4])
    a, b = whole.result(), parts.result()
    assert all(a[k] == pytest.approx(b[k], rel=1e-6) for k in a)
    assert (whole.hist == parts.hist).all() and whole.hist.sum() == ref.size
    expected = 10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((noisy - ref).astype(np.float64) ** 2).sum())
    assert a["sqnr_db"] == pytest.approx(expected, rel=1e-6)


def test_moved_peaks_count_as_disagreement():
    ref, cells = _peaks()
    out = np.roll(ref, 1, axis=3)  # every peak one cell to the right
    out[:3] = np.roll(ref[:3], 2, axis=3)  # half of the crops: two cells
    acc = Agreement(stride=4, pck_alpha=0.05)  # PCK radius 0.05 x 64 px = 3.2 px, less than one cell (4 px)
    acc.update(ref, out)
    r = acc.result()
    assert r["argmax_same"] == 0 and r["argmax_within1"] == pytest.approx(0.5) and r["pck"] == 0
    assert r["argmax_same_detected"] == 0 and r["detected"] == ref.shape[0] * ref.shape[1]
    assert r["kp_dist_px"] == pytest.approx((1 * 4 + 2 * 4) / 2, rel=1e-4)


def test_detected_agreement_ignores_absent_joints_but_not_invented_peaks():
    ref, _ = _peaks(n=4)
    ref[:, 8:] *= 0.05  # joints 8..16: absent, low flat maps
    out = ref.copy()
    out[:, 8:] = np.roll(ref[:, 8:], 3, axis=3)  # absent joints' argmax moves: noise, not a keypoint
    acc = Agreement()
    acc.update(ref, out)
    r = acc.result()
    assert r["argmax_same"] == pytest.approx(8 / 17) and r["argmax_same_detected"] == 1 and r["detected"] == 4 * 8
    out[:, 16] = np.roll(ref[:, 0], 2, axis=2)  # the runtime invents a confident joint 16 elsewhere
    acc = Agreement()
    acc.update(ref, out)
    assert acc.result()["argmax_same_detected"] == pytest.approx(8 / 9)


def test_rules_and_default_thresholds(tmp_path):
    rules = load_thresholds()
    assert rules["fp32"]["max_abs_rel"] == ("<=", 1e-4)
    assert rules["fp16"]["sqnr_db"] == (">=", 40) and rules["int8"]["dap"] == ("<=", 0.02)
    for p in ("fp32", "fp16", "int8", "int8-dynamic", "int8-weights", "palettized-8bit", "palettized-6bit"):
        assert p in rules, p
    assert check({"sqnr_db": 41.0, "oks_agreement": 0.995}, rules["fp16"]) == ([], [])
    fails, _ = check({"sqnr_db": 30.0, "oks_agreement": 0.995}, rules["fp16"])
    assert fails == ["sqnr_db 30 < 40"]
    assert check({"sqnr_db": float("inf"), "oks_agreement": 1.0}, rules["fp16"]) == ([], [])
    assert "dap not measured" in check({"sqnr_db": 30.0, "oks_agreement": 1.0}, rules["int8"])[0][-1]
    # every lossy precision answers both questions: a conversion-fidelity rule and a keypoint rule
    for p in ("int8", "int8-dynamic", "int8-weights", "palettized-8bit", "palettized-6bit"):
        assert "weights_exact" in rules[p] and "oks_agreement" in rules[p] and "dap" in rules[p], p
        assert rules[p]["sqnr_db"] == (">=", 15), p
    assert rules["int8"]["fidelity_sqnr_db"] == (">=", 40) and rules["int8"]["fidelity_in_step"] == (">=", 0.99)
    # an untrained reference: keypoint rules are not applicable (reported with the reason), the others still gate
    row = {"sqnr_db": 10.0, "oks_agreement": 0.1, "dap": 0.5, "weights_exact": 1.0, "fidelity_sqnr_db": 90.0,
           "fidelity_in_step": 1.0, "fidelity_op_sqnr_db": 45.0, "fidelity_op_in_step": 1.0,
           "fidelity_graph_sqnr_db": 120.0}
    fails, na = check(row, rules["int8"], "reference AP 0.01 < 0.3")
    assert fails == ["sqnr_db 10 < 15"]
    assert sorted(n.split()[0] for n in na) == ["dap", "oks_agreement"] and "reference AP 0.01" in na[0]
    fails, _ = check({**row, "fidelity_in_step": 0.5}, rules["int8"], "untrained")
    assert fails[0].startswith("conversion fidelity: fidelity_in_step 0.5 < 0.99")
    bad = tmp_path / "t.yaml"
    bad.write_text("fp16: {snr: '>= 3'}\n")
    with pytest.raises(UserError, match="fp16.snr"):
        load_thresholds(bad)
    assert THRESHOLDS.is_file()


def test_int8_failure_names_the_other_candidates():
    from parity.cli import int8_hint

    sel = {"candidates": [
        {"quantizer": "ai-edge-quantizer static_wi8_ai8", "sqnr_db": 18.7, "int8_activations": True},
        {"quantizer": "ai-edge-quantizer static_wi8_ai16", "sqnr_db": 28.3, "int8_activations": False},
        {"quantizer": "pt2e", "error": "RuntimeError: ..."}]}
    hint = int8_hint(sel, "ai-edge-quantizer static_wi8_ai8")
    assert "static_wi8_ai16 28.3 dB (int16 activations" in hint and "--int8-candidates static_wi8_ai16" in hint
    assert "static_wi8_ai8 18.7" not in hint and "pt2e" not in hint
    assert "no other int8 candidate" in int8_hint(None, None)


def test_oks_agreement_is_one_for_identical_keypoints_and_falls_with_distance():
    from posekit.evaluate import oks_agreement

    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 100, (3, 17, 2))
    areas = np.full(3, 2500.0)
    assert np.allclose(oks_agreement(ref, ref, areas), 1.0)
    near, far = oks_agreement(ref, ref + 1.0, areas), oks_agreement(ref, ref + 10.0, areas)
    assert (far < near).all() and (near < 1).all()
    labelled = np.zeros((3, 17), bool)
    labelled[0, :5] = True
    out = oks_agreement(ref, ref + 1.0, areas, labelled)
    assert np.isnan(out[1:]).all() and 0 < out[0] < 1
