"""posekit/export_tflite.py + runtime/tflite*.py (fp32) and quantize/tflite.py (quantized) on one real block
(EfficientPose-A's ir_k7_e3 at a small spatial size): fp32 parity, the int8 flavours,
int8 I/O, both kernel sets, the op census and bad arguments."""

import numpy as np
import pytest
import torch

from model.blocks import InvertedResidual
from model.deploy import deploy_model
from model.source import randomize
from posekit import export_tflite
from posekit.errors import UserError
from quantize import tflite as qtflite
from runtime import tflite, tflite_flatbuffer


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    net = deploy_model(randomize(InvertedResidual(32, 32, 1, 7, 3)).eval())
    x = torch.randn(1, 32, 8, 6)
    calib = [torch.randn(1, 32, 8, 6, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    d = tmp_path_factory.mktemp("litert")
    return net, x, calib, export_tflite.litert_to_tflite(net, x, d / "fp32.tflite"), d


def _ref(net, x):
    with torch.no_grad():
        return net(x).permute(0, 2, 3, 1).numpy()


def test_fp32_matches_and_both_kernel_sets_run(block):
    net, x, _, fp32, _ = block
    ref = _ref(net, x)
    for xnnpack in (True, False):
        it = tflite.interpreter(fp32, kernels="xnnpack" if xnnpack else "builtin")
        y = tflite.run(it, x.permute(0, 2, 3, 1).numpy())
        assert np.abs(y - ref).max() <= 1e-4 * np.ptp(ref)
    assert tflite_flatbuffer.op_counts(fp32) == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "ADD": 1}
    io = tflite.io_details(fp32)
    assert io["inputs"][0]["name"] == "image" and io["inputs"][0]["shape"] == [1, 8, 6, 32]
    assert io["outputs"][0]["name"] == "heatmaps" and io["outputs"][0]["quantization"] is None


@pytest.mark.parametrize("precision", ["fp16", "int8-dynamic", "int8"])
def test_quantized_flavours(block, precision):
    net, x, calib, fp32, d = block
    q = qtflite.quantize_tflite(fp32, d / f"{precision}.tflite", precision, calib)
    floats = tflite_flatbuffer.float_compute_ops(q)
    assert (floats == {}) == (precision == "int8") == qtflite.fully_integer(q), floats
    y = tflite.run(tflite.interpreter(q), x.permute(0, 2, 3, 1).numpy())
    ref = _ref(net, x)
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.98
    assert q.stat().st_size < fp32.stat().st_size


def test_int8_io_records_scale_and_zero_point(block):
    net, x, calib, fp32, d = block
    q = qtflite.quantize_tflite(fp32, d / "io.tflite", "int8", calib, int8_io=True)
    io = tflite.io_details(q)
    for t in io["inputs"] + io["outputs"]:
        assert t["dtype"] == "int8" and t["quantization"]["scale"] > 0
    assert "QUANTIZE" not in tflite_flatbuffer.op_counts(q)  # nothing float at the edges
    y = tflite.run(tflite.interpreter(q), x.permute(0, 2, 3, 1).numpy())  # run() quantizes / dequantizes
    assert np.corrcoef(y.ravel(), _ref(net, x).ravel())[0, 1] > 0.98


def test_calibration_covers_every_sample_not_a_moving_average(block):
    """The int8 input range is the min/max over all calibration samples: a single sample with a wide range must
    widen it (a moving average of per-sample ranges would keep it near the typical sample's and clip)."""
    net, x, calib, fp32, d = block
    wide = calib[:-1] + [calib[-1] * 6.0]
    q = qtflite.quantize_tflite(fp32, d / "wide.tflite", "int8", wide, int8_io=True)
    qp = tflite.io_details(q)["inputs"][0]["quantization"]
    lo, hi = (-128 - qp["zero_point"]) * qp["scale"], (127 - qp["zero_point"]) * qp["scale"]
    data = torch.cat(wide)
    assert lo <= float(data.min()) * 0.99 and hi >= float(data.max()) * 0.99


def test_pt2e_flow_quantizes_the_convs(block):
    net, x, calib, _, d = block
    q = qtflite.ptq_to_tflite(net, x, d / "pt2e.tflite", "int8", calib, quantizer="pt2e")
    dt = tflite_flatbuffer.op_dtypes(q)
    assert dt.get("CONV_2D:int8") == 2 and dt.get("DEPTHWISE_CONV_2D:int8") == 1


@pytest.mark.parametrize("kw, msg", [({"precision": "int4"}, "precision 'int4'"),
                                     ({"precision": "int8"}, "needs calibration data"),
                                     ({"precision": "fp32", "int8_io": True}, "int8_io needs precision int8"),
                                     ({"precision": "int8", "recipe": "x", "calib": [1]}, "recipe 'x'")])
def test_bad_arguments(block, tmp_path, kw, msg):
    net, x, _, _, _ = block
    with pytest.raises(UserError, match=msg):
        qtflite.ptq_to_tflite(net, x, tmp_path / "bad.tflite", **kw)
    assert not (tmp_path / "bad.tflite").exists()
