"""The BiFPN neck (issue 29): arch data, builder, fast normalized fusion, EfficientDet scaling, deploy folding."""

import json

import pytest
import torch

import model.cli as model_cli
from model import build, dump, load, shipped
from model.arch import HEATMAP_STRIDE, Neck
from model.bifpn import EFFICIENTDET_DEPTH, EFFICIENTDET_WIDTH, ConstantFusion, Fusion, Node, scale_neck
from model.deploy import deploy_model
from model.flops import count_flops
from model.latency import network_keys
from model.scaling import compound_scale
from posekit.errors import UserError

NECKED = "efficientpose_a_bifpn"


def small(name=NECKED, size=(64, 48)):
    return load(name).replace(input_size=size)


def test_heatmaps_at_stride_4_from_the_finest_level():
    a = small()
    assert a.neck.levels == (4, 8, 16) and a.head_stride == 4 and a.head.deconv == ()
    assert a.level_shapes() == {4: (16, 12, 24), 8: (8, 6, 32), 16: (4, 3, 96)}
    net = build(a).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, *a.input_size))
    assert y.shape == (2, a.num_joints, 64 // HEATMAP_STRIDE, 48 // HEATMAP_STRIDE)
    f = count_flops(a)
    assert f["params"] == f["params_backbone"] + f["params_neck"] + f["params_head"]
    assert f["flops"] == f["flops_backbone"] + f["flops_neck"] + f["flops_head"] and f["flops_neck"] > 0


def test_topology_is_efficientdets():
    """3 levels: per layer 2 top-down nodes (T_1, O_0) of 2 inputs, bottom-up O_1 (3 inputs: skip edge) and O_2
    (2); the last layer has no bottom-up path (nothing reads it); lateral 1x1s where channels differ from 64."""
    net = build(small())
    layers = net.neck.layers
    assert len(layers) == 3
    for i, layer in enumerate(layers):
        assert [n.fusion.weight.numel() for n in layer.td] == [2, 2]
        if i < 2:
            assert [n.fusion.weight.numel() for n in layer.bu] == [3, 2]
        else:
            assert layer.bu is None
    assert all(not isinstance(m, torch.nn.Identity) for m in net.neck.lateral)  # 24, 32, 96 channels vs 64
    # every parameter gets a gradient: no dead node (DDP requires it)
    net.train()
    net(torch.randn(2, 3, 64, 48)).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def _node_inputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 8, 6, 5, generator=g) for _ in range(n)]


def test_zero_fusion_weight_removes_its_input():
    """EfficientDet's claim: a weight driven to 0 (ReLU of a raw weight <= 0) removes that input's contribution;
    the output moves with the inputs whose weights are positive. The same holds once frozen for deploy, where the
    input is left out of the graph."""
    torch.manual_seed(0)
    node = Node(3, 8, "relu").eval()
    with torch.no_grad():
        node.fusion.weight.copy_(torch.tensor([0.7, -0.3, 1.2]))
        node.conv[2].running_mean.uniform_(-0.1, 0.1)
    xs = _node_inputs(3)
    y = node(xs)
    changed = [xs[0], torch.randn_like(xs[1]) * 10, xs[2]]
    assert torch.equal(node(changed), y)
    moved = [xs[0], xs[1], xs[2] + 1]
    assert not torch.allclose(node(moved), y)
    frozen = deploy_model(node)
    assert isinstance(frozen.fusion, ConstantFusion) and frozen.fusion.scales[1] == 0.0
    assert max(frozen.fusion.scales) == 1.0  # the largest weight is folded into the depthwise conv
    torch.testing.assert_close(frozen(xs), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frozen(changed), y, rtol=1e-5, atol=1e-5)
    # A zero weight has no gradient through the ReLU: training does not bring an unhelpful input back.
    node.train()
    node(xs).sum().backward()
    assert node.fusion.weight.grad[1] == 0 and node.fusion.weight.grad[0] != 0


def test_zero_weight_in_the_net_removes_a_level():
    """In the whole net: with the first layer's weight on the stride-4 input at 0, replacing that input (the finest
    lateral's output, by a forward hook) leaves the heatmaps unchanged."""
    torch.manual_seed(0)
    net = build(small()).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        net.neck.layers[0].td[0].fusion.weight[0] = -1.0  # O_0 = node(P_0, up(T_1)): P_0's weight
        y = net(x)
        h = net.neck.lateral[0].register_forward_hook(lambda m, i, o: torch.randn_like(o) * 5)
        y_noise = net(x)
        h.remove()
        net.neck.layers[0].td[0].fusion.weight[0] = 1.0
        y_back = net(x)
    assert torch.equal(y_noise, y) and not torch.allclose(y_back, y)


def test_fusion_weights_report_names_each_input_and_the_one_left_out():
    """What train writes to fusion_weights.json and the demo report shows: every fusion node with EfficientDet's
    input names and its normalized weights (summing to 1), and an input driven to zero named as the smallest."""
    from demo.report import _fusion_line
    from model.bifpn import fusion_weights

    net = build(small())
    with torch.no_grad():
        net.neck.layers[1].bu[0].fusion.weight[2] = -0.5  # O_1 of layer 1 = node(P1, T1, down(O0)): down(O0) off
    rows = fusion_weights(net)
    n, repeats = len(net.neck.layers[0].td) + 1, len(net.neck.layers)
    assert len(rows) == (repeats - 1) * (2 * n - 2) + (n - 1)  # the last layer is top-down only
    o1 = next(r for r in rows if r["layer"] == 1 and r["node"] == "O1")
    assert o1["inputs"] == ["P1", "T1", "down(O0)"] and o1["weights"] == [0.5, 0.5, 0.0]
    assert all(abs(sum(r["weights"]) - 1) < 1e-3 for r in rows)
    line = _fusion_line(rows)
    assert line.startswith("smallest 0.00 (layer 1 O1 <- down(O0))")
    assert _fusion_line(None) == "no neck in the derived arch"


def test_phi_scaling_gives_efficientdets_widths_and_depths():
    d0 = Neck("bifpn", (4, 8, 16), 64, 3)
    got = [(scale_neck(d0, phi).width, scale_neck(d0, phi).repeats) for phi in range(8)]
    assert got == [(64, 3), (88, 4), (112, 5), (160, 6), (224, 7), (288, 7), (384, 8), (384, 8)]
    assert got == list(zip(EFFICIENTDET_WIDTH, EFFICIENTDET_DEPTH))
    base = load(NECKED)
    for phi in range(4):
        a = compound_scale(base, phi)
        assert (a.neck.width, a.neck.repeats) == got[phi] and a.neck.levels == base.neck.levels
    # fractional phi: the formulas 64 * 1.35^phi (to a multiple of 8) and 3 + phi (rounded up)
    assert (scale_neck(d0, 0.5).width, scale_neck(d0, 0.5).repeats) == (72, 4)


@pytest.mark.slow(20)  # counts the phi-2 net's FLOPs at 336x256
def test_scale_cli_writes_the_scaled_neck(tmp_path, capsys):
    out = tmp_path / "a2.yaml"
    assert model_cli.main(["scale", NECKED, "--phi", "2", "-o", str(out)]) == 0
    n = load(out).neck
    assert (n.width, n.repeats, n.levels) == (112, 5, (4, 8, 16))


def test_absent_neck_leaves_nets_unchanged(tmp_path):
    """Every shipped net without a neck: no 'neck' in its data, module or state dict; the necked arch with its neck
    removed (and the plain head back) is EfficientPose-A, parameter for parameter."""
    for name, path in shipped().items():
        a = load(path)
        if a.neck is None:
            assert "neck" not in a.to_dict() and "neck" not in dump(a, tmp_path / f"{name}.yaml").read_text()
            net = build(a)
            assert not hasattr(net, "neck") and not any(k.startswith("neck.") for k in net.state_dict())
    a, b = load("efficientpose_a"), load(NECKED)
    plain = b.replace(neck=None, head=a.head, name=a.name, meta=a.meta)
    assert plain == a
    torch.manual_seed(0)
    sa = build(a).state_dict()
    torch.manual_seed(0)
    sp = build(plain).state_dict()
    assert list(sa) == list(sp) and all(torch.equal(sa[k], sp[k]) for k in sa)
    sb = build(b).state_dict()
    assert all(sb[k].shape == v.shape for k, v in sa.items() if k.startswith("backbone."))


BAD_NECK = [
    ("neck.levels[2]", "produces no stride-32", lambda n: n.update(levels=[8, 16, 32])),
    ("neck.levels[1]", "not twice", lambda n: n.update(levels=[4, 16])),
    ("neck.levels", "coarsest level", lambda n: n.update(levels=[4, 8])),
    ("neck.levels", "at least 2", lambda n: n.update(levels=[16])),
    ("neck.width", ">= 1", lambda n: n.update(width=0)),
    ("neck.width", ">= 1", lambda n: n.update(width=-64)),
    ("neck.repeats", ">= 1", lambda n: n.update(repeats=0)),
    ("neck.repeats", "expected 1..12", lambda n: n.update(repeats=40)),
    ("neck.type", "unknown neck type", lambda n: n.update(type="fpn")),
    ("neck.depth", "unknown field", lambda n: n.update(depth=3)),
    ("neck.width", "missing", lambda n: n.pop("width")),
]


@pytest.mark.parametrize("field,what,mutate", BAD_NECK, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_NECK)])
def test_bad_neck_is_one_line_naming_the_field(tmp_path, capsys, field, what, mutate):
    d = load(NECKED).to_dict()
    mutate(d["neck"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError) as e:
        load(path)
    assert str(path) in str(e.value) and f"{field}:" in str(e.value) and what in str(e.value), str(e.value)
    assert model_cli.main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and field in err, err


def test_head_stride_must_match_the_neck(tmp_path):
    d = load(NECKED).to_dict()
    d["head"]["deconv"] = [32]  # stride 4 -> 2
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"head\.deconv: neck output stride 4"):
        load(path)


def test_deploy_folds_the_fusions_exactly():
    torch.manual_seed(0)
    net = build(small()).eval()
    with torch.no_grad():  # trained-looking weights: unequal, one of them 0
        for i, f in enumerate(m for m in net.modules() if isinstance(m, Fusion)):
            f.weight.copy_(torch.rand(f.weight.numel()) * 2)
            if i == 3:
                f.weight[0] = -0.2
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    d = deploy_model(net)
    assert not any(isinstance(m, (Fusion, torch.nn.BatchNorm2d)) for m in d.modules())
    assert not any(isinstance(p, torch.nn.Parameter) and p.numel() <= 3 for p in d.parameters())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(d(x), net(x), rtol=1e-4, atol=1e-4)


def test_neck_has_a_lut_key():
    keys = network_keys(load(NECKED))
    assert "neck:bifpn_w64_r3_relu|in=64x48x24+32x24x32+16x12x96" in keys
    assert keys[-1] == "head:plain_d_k4_sic|in=64x48x64|out=17"
    assert not any(k.startswith("neck:") for k in network_keys(load("efficientpose_a")))


def test_reference_executors_run_the_necks_resampling_ops():
    """The ops a neck adds, in the two reference executors parity uses: the TFLite twin's RESIZE_NEAREST_NEIGHBOR index
    rule and the Core ML executor's max_pool / upsample_nearest_neighbor, against torch."""
    import torch.nn.functional as F

    from runtime.coreml_ops import op_max_pool, op_upsample_nearest_neighbor
    from runtime.tflite_twin import _nearest_index

    x = torch.randn(1, 5, 6, 4)
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    for opts in ({}, {"HalfPixelCenters": True}):
        rows, cols = _nearest_index(12, 6, opts), _nearest_index(8, 4, opts)
        assert torch.equal(x[:, :, rows][:, :, :, cols], up)
    got = op_upsample_nearest_neighbor({"x": x.numpy(), "scale_factor_height": 2, "scale_factor_width": 2.0})
    assert torch.equal(torch.from_numpy(got), up)
    got = op_max_pool({"x": x.numpy(), "kernel_sizes": [2, 2], "strides": [2, 2], "pad_type": "valid"})
    assert torch.equal(torch.from_numpy(got), F.max_pool2d(x, 2, 2))
    got = op_max_pool({"x": x.numpy(), "kernel_sizes": [3, 3], "strides": [2, 2], "pad_type": "custom",
                       "pad": [1, 1, 1, 1]})
    assert torch.equal(torch.from_numpy(got), F.max_pool2d(x, 3, 2, 1))


def test_neck_lut_part_is_the_neck_on_packed_levels():
    """The LUT part of a neck (one input: its levels packed channels-last) computes what the neck computes."""
    from device_bench.parts import arch_parts
    from model.bifpn import PackedNeck

    a = small()
    parts = arch_parts(a)
    assert list(parts) == list(dict.fromkeys(network_keys(a)))  # repeated blocks share a key
    key = next(k for k in parts if k.startswith("neck:"))
    part = parts[key]
    m = part.module()
    assert isinstance(m, PackedNeck) and part.in_hwc == (1, 1, 16 * 12 * 24 + 8 * 6 * 32 + 4 * 3 * 96)
    x = part.sample()
    levels, o = [], 0
    for h, w, c in a.level_shapes().values():
        levels.append(x.flatten(1)[:, o:o + h * w * c].reshape(1, h, w, c).permute(0, 3, 1, 2))
        o += h * w * c
    with torch.no_grad():
        assert torch.equal(m(x), m.neck(levels))
    assert parts[network_keys(a)[-1]].in_hwc == a.head_in_shape == (16, 12, 64)
