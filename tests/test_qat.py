"""quantize qat: the fake-quant twin, the exported fully-integer .tflite against it, the manifest entry, resume after
kill -9. Real (tiny) runs at 64x48 on the bundled COCO crops, with trained-scale weights (convert's random init:
kaiming weights, BatchNorm statistics from real crops): a small net of EfficientPose-A's kinds of op (MBV1 head) for
the export and resume, EfficientPose-A itself for distillation."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
TINY = ["--limit", "4", "--batch-size", "2", "--calib", "4", "--no-eval", "--no-progress", "--threads", "1"]


def qat(*args, check=True, **kw):
    r = subprocess.run([sys.executable, "-m", "quantize", "qat", *args], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=900, **kw)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def _random_init(arch: str, path: Path, head=None, input_size=None) -> Path:
    """convert's random init of an arch (kaiming weights, BatchNorm statistics from real crops), as a checkpoint."""
    from model.checkpoint import save_checkpoint
    from model.source import load_source
    from quantize.calibration import calibration_batches

    src = load_source(None, arch, head, input_size, crops=lambda a: calibration_batches(a, None, 8))
    return save_checkpoint(path, src.net, src.arch, note="test net")


@pytest.fixture(scope="module")
def epa_ckpt(tmp_path_factory):
    return _random_init("efficientpose_a", tmp_path_factory.mktemp("qat") / "epa.pt", "mbv1", "64x48")


@pytest.fixture(scope="module")
def small_arch_ckpt(tmp_path_factory):
    """EfficientPose-A in small: its stem (conv, depthwise, linear 1x1) and its kinds of block (expand 3/6, kernels
    3/5/7, stride 2, skips) with the MBV1 head, at a fraction of its depth. The export and resume tests need the
    QAT graph's every kind of op, not EfficientPose-A's 26 blocks (its QAT export alone took ~25 s)."""
    from model.arch import dump, from_dict

    d = tmp_path_factory.mktemp("qat-small-arch")
    arch = dump(from_dict({
        "name": "small-efficientpose-a", "num_joints": 17, "input_size": [64, 48], "act": "relu",
        "stem": [{"op": "conv_k3", "out": 16, "stride": 2}, {"op": "dwconv_k3", "out": 16, "stride": 1},
                 {"op": "conv_k1", "out": 16, "stride": 1, "act": "none"}],
        "blocks": [{"op": "ir_k3_e6", "out": 24, "stride": 2}, {"op": "ir_k7_e3", "out": 24, "stride": 1},
                   {"op": "ir_k5_e6", "out": 32, "stride": 2}, {"op": "ir_k3_e3", "out": 32, "stride": 1},
                   {"op": "ir_k7_e6", "out": 48, "stride": 2}, {"op": "ir_k5_e3", "out": 48, "stride": 1}],
        "tail": [], "head": {"type": "mbv1", "deconv": [32, 32], "kernel": 4, "sic": True}}, src="test_qat"),
        d / "arch.yaml")
    return _random_init(str(arch), d / "small.pt")


@pytest.fixture(scope="module")
def exported(small_arch_ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("qat-run")
    qat("--ckpt", str(small_arch_ckpt), "--epochs", "1", *TINY, "--out", str(base / "run"), "--artifacts",
        str(base / "art"))
    return base / "run", base / "art"


def test_activation_scale_is_ai_edge_quantizers(one_thread):
    """The learned range gives the scale / zero point ai-edge-quantizer derives from the same min/max."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize.uniform_quantize_tensor import tensor_zp_scale_from_min_max

    from quantize.qat import ActQuant

    g = np.random.default_rng(0)
    for lo, hi, relu in [(-2.1, 2.6, False), (0.0, 5.3, True), (-0.01, 7.0, False), (-3.0, 0.2, False)]:
        lo, hi = lo * g.uniform(0.5, 2), hi * g.uniform(0.5, 2)
        q = ActQuant(relu)
        with torch.no_grad():
            q.lo.fill_(lo)
            q.hi.fill_(hi)
        zp, scale = tensor_zp_scale_from_min_max(np.array([lo], np.float32), np.array([hi], np.float32), 8, False,
                                                 qtyping.QuantGranularity.TENSORWISE)
        s, z = q.qparams()
        assert np.float32(s.item()) == np.float32(scale[0]) and int(z.item()) == int(zp[0])


@pytest.mark.slow(25)  # the fixture: a QAT run and its export
def test_tflite_is_exact_to_its_twin(exported, one_thread):
    """On val and train crops: >= 99% of the int8 outputs identical or one step apart, SQNR >= 40 dB (measured:
    all identical against XNNPACK)."""
    from quantize.calibration import calibration_batches, eval_batches
    from quantize.qat import load_qat, twin_agreement
    from runtime import tflite_flatbuffer

    run, art = exported
    man = json.loads((art / "manifest.json").read_text())
    (entry,) = [a for a in man["artifacts"] if a["quantizer"] == "qat"]
    assert entry["precision"] == "int8" and entry["qat"]["fully_integer"]
    path = art / entry["file"]
    assert not tflite_flatbuffer.float_compute_ops(path)
    assert tflite_flatbuffer.op_dtypes(path).get("CONV_2D:int8", 0) > 0
    twin, arch, _ = load_qat(art / entry["qat"]["twin"])
    crops = eval_batches(arch, n=4) + calibration_batches(arch, n=4)
    a = twin_agreement(twin, path, crops)
    assert a["within_one_step"] >= 0.99, a
    assert a["sqnr_db"] is None or a["sqnr_db"] >= 40, a  # None: no difference at all
    # the twin is the trained QAT model: the run's last.pt holds the same weights and ranges
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(v, last["model"][k]) for k, v in twin.state_dict().items())


@pytest.mark.slow(2)
def test_file_scales_are_the_learned_ones(exported):
    """No re-calibration: every activation scale / zero point in the file is one of the QAT model's ranges."""
    from quantize.qat import _tensor_quant, load_qat

    _, art = exported
    twin = load_qat(art / "qat" / "model_qat.pt")[0]
    learned = {(np.float32(s.item()), int(z.item())) for s, z in (q.qparams() for q in twin.quantizers())}
    fq = _tensor_quant((art / "tflite" / "model_int8_qat.tflite").read_bytes())
    acts = {(np.float32(s[0]), int(z[0])) for s, z in fq.values() if len(s) == 1 and z[0] != 0}
    assert acts and acts <= learned


# `python -m quantize qat` that kill -9s itself when epoch 2 is trained and its checkpoint write begins: the kill lands
# mid-run on any machine (no race against a fast one), with epoch 1 saved and epoch 2's work lost.
KILL_AT_EPOCH_2_SAVE = """
import os, runpy, signal
from quantize.qat_train import QATTrainer
save = QATTrainer.save
def save_or_die(self, epoch):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, epoch)
QATTrainer.save = save_or_die
runpy.run_module("quantize", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow(16)  # three QAT processes
def test_kill_during_qat_then_resume_is_the_uninterrupted_result(small_arch_ckpt, tmp_path, capsys):
    args = ["--ckpt", str(small_arch_ckpt), "--epochs", "2", *TINY, "--no-export"]
    qat(*args, "--out", str(tmp_path / "whole"))
    out = tmp_path / "killed"
    r = subprocess.run([sys.executable, "-c", KILL_AT_EPOCH_2_SAVE, "qat", *args, "--out", str(out)], cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    assert not [q for q in out.iterdir() if q.name.startswith(".")]  # no half-written file visible
    r = qat(*args, "--out", str(out))
    assert "resuming" in r.stdout
    a = torch.load(tmp_path / "whole" / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    # other options in the same run folder: refused, not silently mixed
    from quantize.cli import main

    rc = main(["qat", "--ckpt", str(small_arch_ckpt), "--epochs", "3", *TINY, "--no-export", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "epochs" in err, err


@pytest.mark.parametrize("argv, msg", [
    (["--epochs", "-1"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--ckpt", "no/such.pt"], "no/such.pt"),
])
def test_bad_input_is_one_line(argv, msg, tmp_path, capsys):
    from quantize.cli import main

    try:
        rc = main(["qat", *argv, "--out", str(tmp_path / "r")])
    except SystemExit as e:  # argparse: usage line, then the error line
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and msg in err[-1], err
    assert not (tmp_path / "r").exists()


def test_help(capsys):
    from quantize.cli import main

    try:
        rc = main(["qat", "--help"])
    except SystemExit as e:  # argparse's --help exit, unless a main_guard returns it
        rc = e.code
    out = capsys.readouterr().out
    assert rc == 0 and "quantization-aware" in out and "--epochs" in out


@pytest.mark.slow(3)
def test_parity_holds_the_qat_file_to_its_twin(exported, tmp_path, capsys, one_thread):
    from parity.cli import main

    _, art = exported
    rc = main(["--model-dir", str(art), "--crops", "3", "--no-locate", "--out", str(tmp_path / "p")])
    rep = json.loads((tmp_path / "p" / "report.json").read_text())
    (row,) = [r for r in rep["rows"] if r["quantizer"] == "qat"]
    assert row["twin"]["within_one_step"] >= 0.99 and row["status"] == "pass", row
    assert rc == 0, capsys.readouterr().out


@pytest.mark.slow(12)  # a QAT run of 3 epochs
def test_distillation_brings_the_int8_twin_toward_the_float_net(epa_ckpt, tmp_path, one_thread):
    """The default loss (distill) fits the fake-quant net to the float checkpoint's heatmaps: after QAT, the twin is
    closer to the float net on its training crops than the calibrated-only twin (the PTQ start) was."""
    from model.checkpoint import load_checkpoint
    from posekit.data import CocoPose
    from posekit.keypoints import DEFAULT_COCO
    from quantize.calibration import calibration_batches
    from quantize.qat import QATNet, load_qat

    out = tmp_path / "run"
    qat("--ckpt", str(epa_ckpt), "--epochs", "3", *TINY, "--no-export", "--out", str(out))
    cfg = json.loads((out / "report.json").read_text())["config"]
    assert cfg["loss"] == "distill"
    net, arch, _ = load_checkpoint(epa_ckpt)
    start = QATNet(net)
    start.calibrate(calibration_batches(arch, None, 4))
    trained = load_qat(torch.load(out / "last.pt", map_location="cpu", weights_only=True))[0]
    ds = CocoPose(DEFAULT_COCO, "train2017", arch.input_size, train=False, limit=4)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.no_grad():
        ref = net.eval()(x)
        before = float(((start.eval()(x) - ref) ** 2).mean())
        after = float(((trained.eval()(x) - ref) ** 2).mean())
    assert after < before, (before, after)


def test_qat_quantizes_the_shipped_interleave_head_and_still_loads_a_subpixel_state(one_thread):
    """QATNet's head is the .tflite's form (model.deploy.TFLITE_REWRITE): interleave, its row phases sharing a
    quantizer; a QAT state saved with "deconv": "subpixel" (before the change) loads as that form, same outputs."""
    from parity_helpers import tiny_net

    from model.deploy import TFLITE_REWRITE
    from quantize.calibration import calibration_batches
    from quantize.qat import QATNet, QInterleave, QSubPixel, load_qat, qat_state

    net = tiny_net()
    crops = calibration_batches(net.arch, None, 3)
    new = QATNet(net).calibrate(crops).eval()
    assert new.deconv == TFLITE_REWRITE == "interleave"
    (first, *_), = [[m for m in new.modules() if isinstance(m, QInterleave)]]
    assert first.phases[0].outq is first.phases[1].outq is first.rows[0] and first.rows[0] is not first.rows[1]
    old = QATNet(net, "subpixel").calibrate(crops).eval()
    st = qat_state(old, net.arch)
    assert st["deconv"] == "subpixel"
    back, _, _ = load_qat(st)
    assert back.deconv == "subpixel" and any(isinstance(m, QSubPixel) for m in back.modules())
    assert torch.equal(back(crops[0]), old(crops[0]))
    assert load_qat(qat_state(new, net.arch))[0].deconv == "interleave"
    with torch.no_grad():  # both forms are the same network in float
        with new.float_mode(), old.float_mode():
            assert torch.allclose(new(crops[0]), old(crops[0]), atol=1e-5)
