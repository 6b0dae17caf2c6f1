"""The Core ML reference executor against PyTorch (fp32 program, every head variant) and against coremltools' own
decompression (compressed-weight ops), on Core ML models made here with coremltools.convert."""

import contextlib

import numpy as np
import pytest
import torch

from runtime.coreml_reference import CoreMLProgram, UnsupportedOp
from tests.parity_helpers import INPUT, compress, coreml_convert, tiny_net


@contextlib.contextmanager
def one_thread():  # tiny convs on a shared 2-core machine: threads only wait for each other
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _inputs(n=2, seed=1):
    return torch.randn(n, 3, *INPUT, generator=torch.Generator().manual_seed(seed))


def _run(path, x):
    prog = CoreMLProgram(path)
    with one_thread():
        return prog, np.concatenate([prog.run({"image": x[i:i + 1].numpy()})["heatmaps"] for i in range(len(x))])


@pytest.mark.parametrize("head,act", [("plain", "relu"), ("mbv1", "relu6"), ("mbv2", "relu")])
def test_executor_matches_pytorch_fp32(tmp_path, head, act):
    net = tiny_net(head, act)
    x = _inputs()
    with torch.no_grad():
        ref = net(x).numpy()
    coreml_convert(net, tmp_path / "m.mlpackage", "fp32")
    prog, y = _run(tmp_path / "m.mlpackage", x)
    assert prog.op_counts["conv_transpose"] == 2 and prog.op_counts["conv"] > 5
    assert y.shape == ref.shape == (2, 17, INPUT[0] // 4, INPUT[1] // 4)
    rng = ref.max() - ref.min()
    assert rng > 0.1  # not a trivially flat output
    assert np.abs(y - ref).max() <= 1e-4 * rng
    assert np.abs(y - ref).max() <= 1e-4


def test_neuralnetwork_with_image_preprocessing(tmp_path):
    """A .mlmodel (weights inline in the protobuf) with an RGB image input: scale and per-channel bias applied."""
    net = tiny_net("mbv1")
    scale, bias = 1 / 255 / 0.226, [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]
    coreml_convert(net, tmp_path / "m.mlmodel", neuralnetwork=True,
                   image_input={"scale": scale, "bias": bias})
    pixels = torch.randint(0, 256, (1, 3, *INPUT), generator=torch.Generator().manual_seed(3)).float()
    with torch.no_grad():
        ref = net(pixels * scale + torch.tensor(bias).view(1, 3, 1, 1)).numpy()
    prog, y = _run(tmp_path / "m.mlmodel", pixels)
    assert prog.kind == "neuralNetwork" and prog.inputs[0]["kind"] == "image"
    assert np.abs(y - ref).max() <= 1e-4 * (ref.max() - ref.min())


def test_neuralnetwork_runs_a_bifpn_neck(tmp_path):
    """A BiFPN net (issue 29) as a .mlmodel: its bottom-up max pooling and top-down nearest upsampling are
    NeuralNetwork `pooling` / `upsample` layers, run by the executor as Core ML defines them, against PyTorch."""
    from model import build, load
    from model.deploy import deploy_model

    torch.manual_seed(0)
    net = deploy_model(build(load("efficientpose_a_bifpn").replace(input_size=INPUT)))
    x = _inputs(1)
    with torch.no_grad():
        ref = net(x).numpy()
    coreml_convert(net, tmp_path / "m.mlmodel", neuralnetwork=True)
    prog, y = _run(tmp_path / "m.mlmodel", x)
    assert prog.kind == "neuralNetwork" and prog.op_counts["pooling"] >= 2 and prog.op_counts["upsample"] >= 2
    assert np.abs(y - ref).max() <= 1e-4 * (ref.max() - ref.min())


@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
def test_compressed_weight_ops_match_coremltools(tmp_path, target):
    """int8 weights (constexpr_affine_dequantize on iOS16, constexpr_blockwise_shift_scale on iOS18) and 6-bit
    palettization (constexpr_lut_to_dense, packed on iOS16, uint6 on iOS18) decode exactly as coremltools'
    decompress_weights; and the fp16 program (fp16 I/O and storage) stays within fp16 precision of PyTorch."""
    import coremltools.optimize.coreml as cto

    net = tiny_net("mbv2")
    x = _inputs(1)
    with torch.no_grad():
        ref = net(x).numpy()
    m = coreml_convert(net, tmp_path / "fp32.mlpackage", "fp32", target)
    for how, op in (("int8-weights", {"iOS16": "constexpr_affine_dequantize",
                                      "iOS18": "constexpr_blockwise_shift_scale"}[target]),
                    ("palettized-6bit", "constexpr_lut_to_dense")):
        q = compress(m, how, tmp_path / f"{how}.mlpackage")
        cto.decompress_weights(q).save(str(tmp_path / f"{how}_dq.mlpackage"))
        prog, y = _run(tmp_path / f"{how}.mlpackage", x)
        assert prog.op_counts[op] >= 10
        _, y_dq = _run(tmp_path / f"{how}_dq.mlpackage", x)
        assert np.abs(y - y_dq).max() <= 1e-6 * (ref.max() - ref.min())
        assert 0 < np.abs(y - ref).max() < 0.1 * (ref.max() - ref.min())  # compressed: close, not equal
    if target == "iOS16":
        coreml_convert(net, tmp_path / "fp16.mlpackage", "fp16", target)
        _, y16 = _run(tmp_path / "fp16.mlpackage", x)
        sqnr = 10 * np.log10((ref**2).sum() / ((y16 - ref) ** 2).sum())
        assert 40 < sqnr < 120  # fp16 storage between ops is emulated (an fp32 run would be ~140 dB)


def test_unknown_op_fails_loudly_naming_it(tmp_path):
    class Gelu(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.gelu(x)

    from posekit.coreml_import import ct

    x = torch.zeros(1, 3, 8, 8)
    m = ct.convert(torch.jit.trace(Gelu().eval(), x), inputs=[ct.TensorType(name="x", shape=x.shape)],
                   convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16)
    m.save(str(tmp_path / "g.mlpackage"))
    with pytest.raises(UnsupportedOp, match="gelu"):
        CoreMLProgram(tmp_path / "g.mlpackage")
