"""runtime/arm64.py: a real block (EfficientPose-A's ir_k7_e3, small spatial size) as int8 (int8 I/O) and fp32
.tflite files, run by the host's x86 LiteRT and by aarch64 LiteRT under qemu-user on one ARM profile (`make test`
installs the runtime: `make setup-arm`). Emulation is slow (about 10 s an emulator start here), so one profile and
one start for both files."""

import numpy as np
import pytest
import torch

from model.blocks import InvertedResidual
from model.deploy import deploy_model
from model.source import randomize
from posekit.errors import UserError
from posekit.export_tflite import litert_to_tflite
from quantize import tflite as qtflite
from runtime import arm64

PROFILE = "armv8.2-dotprod"  # the int8 dot-product kernels most phones run


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    net = deploy_model(randomize(InvertedResidual(32, 32, 1, 7, 3)).eval())
    xs = [torch.randn(1, 32, 8, 6, generator=torch.Generator().manual_seed(100 + i)) for i in range(2)]
    calib = [torch.randn(1, 32, 8, 6, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    d = tmp_path_factory.mktemp("arm64")
    fp32 = litert_to_tflite(net, xs[0], d / "fp32.tflite")
    int8 = qtflite.quantize_tflite(fp32, d / "int8.tflite", "int8", calib, int8_io=True)
    return {"fp32": fp32, "int8": int8}, [x.permute(0, 2, 3, 1).numpy() for x in xs]


@pytest.mark.slow(35)  # two conversions (the fixture) and one emulator start
def test_int8_is_integer_exact_and_fp32_close_on_arm64(models):
    files, xs = models
    inputs = {p: arm64.model_inputs(path, xs) for p, path in files.items()}
    assert inputs["int8"][0].dtype == np.int8 and inputs["fp32"][0].dtype == np.float32
    # both files in one emulator start (most of a run's time is python and LiteRT starting under emulation)
    (runs,) = arm64.run_models([(files[p], inputs[p]) for p in files], profiles=[PROFILE])
    for (precision, path), r in zip(files.items(), runs):
        assert r.ok, r.error
        agree = arm64.compare(arm64.host_outputs(path, inputs[precision]), r.outputs, tol=1e-5)
        assert agree.ok, agree.text
        if precision == "int8":
            assert r.outputs[0]["heatmaps"].dtype == np.int8 and agree.differing == 0 and agree.max_steps == 0
            assert np.ptp(r.outputs[0]["heatmaps"].astype(int)) > 10  # a real output, not a constant
        # what the runtime saw: the emulated CPU's own features, the pinned emulator and LiteRT
        assert "asimddp" in r.seen["features"] and "sve" not in r.seen["features"]
        assert int(r.seen["qemu"].split(".")[0]) >= 10 and r.seen["litert"] == "2.3.0"
        assert r.seen["machine"] == "aarch64" and r.seen["kernels"] == "XNNPACK delegate"
        assert r.emulated_s > 0


def test_one_step_in_one_element_fails_and_is_named(models):
    files, xs = models
    inputs = arm64.model_inputs(files["int8"], xs)
    host = arm64.host_outputs(files["int8"], inputs)
    arm = [{k: v.copy() for k, v in out.items()} for out in host]
    y = arm[1]["heatmaps"]
    idx = (0, 3, 2, 5)
    y[idx] = y[idx] + 1 if y[idx] < 127 else y[idx] - 1
    agree = arm64.compare(host, arm)
    assert not agree.ok and agree.differing == 1 and agree.max_steps == 1
    assert "input 1 heatmaps[0, 3, 2, 5]" in agree.text and "1 step" in agree.text
    assert arm64.compare(host, host).ok
    # float: a change of 1e-3 of the range fails a 1e-5 tolerance and is named
    f = [{"heatmaps": np.linspace(0, 1, 24, dtype=np.float32).reshape(1, 2, 3, 4)}]
    g = [{"heatmaps": f[0]["heatmaps"].copy()}]
    g[0]["heatmaps"][0, 1, 2, 3] += 1e-3
    bad = arm64.compare(f, g, tol=1e-5)
    assert not bad.ok and "heatmaps[0, 1, 2, 3]" in bad.text and bad.max_rel == pytest.approx(1e-3, rel=1e-3)


def test_missing_runtime_names_make_setup_arm(models, tmp_path):
    files, xs = models
    with pytest.raises(UserError) as e:
        arm64.run(files["fp32"], xs, root=tmp_path / "no-arm64")
    assert "make setup-arm" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown"):
        arm64.run(files["fp32"], xs, profiles=["armv7"])


def test_a_profile_that_does_not_finish_is_a_failed_result(models):
    files, xs = models
    (r,) = arm64.run(files["fp32"], xs, profiles=["armv8.0"], timeout=0.5)
    assert not r.ok and "armv8.0" in r.error and "timed out" in r.error and r.outputs == []
