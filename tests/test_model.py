"""The shared network package: arch files, builder, heads, FLOPs, scaling, search space, LUT keys."""

import json
import subprocess
import sys

import pytest
import torch

from model import build, dump, from_dict, load, shipped
from model.flops import count_flops
from model.latency import LUT, load_lut, network_keys
from model.scaling import compound_scale
from model.space import load_space
from posekit.errors import UserError

PUBLISHED_PARAMS = {"efficientpose_a": 1.30e6, "efficientpose_b": 3.25e6, "efficientpose_c": 5.00e6}


def small(name="efficientpose_a", head=None, size=(64, 48)):
    a = load(name)
    a.input_size = size
    if head:
        a.head.type = head
    return a


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_param_counts(name):
    n = sum(p.numel() for p in build(name).parameters())
    assert abs(n - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] <= 0.01, n


@pytest.mark.parametrize("head", ["plain", "mbv1", "mbv2"])
@pytest.mark.parametrize("name", ["efficientpose_a", "mobilenetv2_simplebaseline"])
def test_heatmaps_at_stride_4_for_every_head(name, head):
    a = small(name, head, size=(128, 96) if name.startswith("mobilenet") else (64, 48))
    net = build(a).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, *a.input_size))
    assert y.shape == (2, a.num_joints, a.input_size[0] // 4, a.input_size[1] // 4)


def test_mbv1_head_has_fewer_flops_than_plain():
    plain, mbv1 = count_flops(load("efficientpose_a")), count_flops(small(head="mbv1", size=(256, 192)))
    assert mbv1["flops_head"] < plain["flops_head"]
    assert mbv1["flops_backbone"] == plain["flops_backbone"]
    assert plain["flops"] == plain["flops_backbone"] + plain["flops_head"] == 2 * plain["macs"]


def test_flops_grow_with_phi():
    base = load("efficientpose_a")
    flops = [count_flops(compound_scale(base, phi))["flops"] for phi in range(4)]
    assert flops == sorted(flops) and len(set(flops)) == 4
    s = compound_scale(base, 2)
    assert all(b.out % 8 == 0 for b in s.blocks) and all(v % 16 == 0 for v in s.input_size)
    assert len(s.blocks) > len(base.blocks)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_arch_file_round_trip(tmp_path, suffix):
    for name, path in shipped().items():
        a = load(path)
        out = dump(a, tmp_path / f"{name}{suffix}")
        b = load(out)
        assert b.to_dict() == a.to_dict()
        sa, sb = build(a).state_dict(), build(b).state_dict()
        assert [(k, v.shape) for k, v in sa.items()] == [(k, v.shape) for k, v in sb.items()]


def test_compact_block_strings_decode():
    d = load("efficientpose_a").to_dict()
    d["blocks"] = ["ir_k3_e6_c24_s2", "ir_k7_e3_c24", "skip_c24"] + d["blocks"][4:]
    a = from_dict(d)
    assert [(b.op, b.out, b.stride) for b in a.blocks[:3]] == [("ir_k3_e6", 24, 2), ("ir_k7_e3", 24, 1),
                                                               ("skip", 24, 1)]


BAD = [
    ("blocks[2].op", lambda d: d["blocks"][2].update(op="ir_k4_e6")),
    ("blocks[2].op", lambda d: d["blocks"][2].update(op="conv_bogus")),
    ("blocks[0].stride", lambda d: d["blocks"][0].update(stride=3)),
    ("blocks[0].op", lambda d: d["blocks"][0].update(op="skip")),
    ("stem[1].out", lambda d: d["stem"][1].update(out=48)),
    ("head.deconv", lambda d: d["head"].update(deconv=[64])),
    ("head.type", lambda d: d["head"].update(type="fpn")),
    ("num_joints", lambda d: d.pop("num_joints")),
    ("input_size", lambda d: d.update(input_size=[250, 192])),
    ("blocks[5].out", lambda d: d["blocks"][5].update(out=-4)),
]


@pytest.mark.parametrize("field,mutate", BAD, ids=[b[0] + str(i) for i, b in enumerate(BAD)])
def test_bad_arch_file_names_file_and_field(tmp_path, field, mutate):
    d = load("efficientpose_a").to_dict()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError) as e:
        load(path)
    assert str(path) in str(e.value) and field in str(e.value)


def test_cli_reports_one_line_and_exit_2(tmp_path, root):
    d = load("efficientpose_a").to_dict()
    d["blocks"][3]["op"] = "ir_k4_e6"
    (tmp_path / "bad.json").write_text(json.dumps(d))
    (tmp_path / "broken.yaml").write_text("blocks: [oops\n")
    for name, what in (("bad.json", "blocks[3].op"), ("broken.yaml", "malformed"), ("missing.yaml", "no such file")):
        path = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "model", "check", str(path)], cwd=root, capture_output=True,
                           text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert str(path) in r.stderr and what in r.stderr and "Traceback" not in r.stderr


def test_info_cli_prints_family(root):
    r = subprocess.run([sys.executable, "-m", "model", "info", "efficientpose_a", "--family", "1"], cwd=root,
                       capture_output=True, text=True, check=True)
    assert "phi=1" in r.stdout and "GMAC" in r.stdout


def test_search_space_layers_and_archs():
    s = load_space("default")
    layers = s.layers()
    assert len(layers) == 26
    firsts = {0, 4, 10, 18}
    for layer in layers:
        assert ("skip" in layer.candidates) == (layer.index not in firsts)
    a = s.arch_for([layer.candidates[-1] for layer in layers])
    assert a.backbone_stride == 16 and a.head.type == "mbv1"
    keys = set(s.lut_keys())
    assert set(network_keys(a)) <= keys and set(network_keys(load("efficientpose_a"))) - keys


def test_lut_sum_and_clear_errors(tmp_path):
    s = load_space("default")
    lut = LUT({"device": "toy", "backend": "test", "runtime": "none", "precision": "fp32",
               "provenance": "synthetic (test)", "search_space": s.name, "search_space_sha256": s.sha256},
              {k: {"median_ms": 1.0, "mean_ms": 1.0, "std_ms": 0.0, "n": 1} for k in s.lut_keys()})
    path = lut.save(tmp_path / "toy.json")
    lut = load_lut(path, space=s)
    a = s.arch_for([layer.candidates[0] for layer in s.layers()])
    assert lut.latency(a) == len(network_keys(a))
    with pytest.raises(UserError, match="missing.*make lut DEVICE=toy"):
        lut.latency(load("efficientpose_b"))
    path.write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        load_lut(path)
    with pytest.raises(UserError, match="make lut DEVICE=nosuch"):
        load_lut("nosuch")
