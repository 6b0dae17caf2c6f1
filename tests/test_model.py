"""The shared network package: arch files, builder, heads, FLOPs, scaling, search space, LUT keys."""

import copy
import dataclasses
import json
import pickle
import random
import subprocess
import sys

import pytest
import torch
import yaml

import model.cli as model_cli
from model import Arch, Head, Layer, Op, Stage, build, dump, from_dict, load, shipped
from model.arch import HEATMAP_STRIDE
from model.flops import count_flops
from model.latency import LUT, load_lut, network_keys
from model.scaling import compound_scale
from model.space import SPACE_DIR, load_space
from posekit.errors import UserError

PUBLISHED_PARAMS = {"efficientpose_a": 1.30e6, "efficientpose_b": 3.25e6, "efficientpose_c": 5.00e6}


def small(name="efficientpose_a", head=None, size=(64, 48)):
    a = load(name).replace(input_size=size)
    return a.replace(head=a.head.replace(type=head)) if head else a


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
    assert y.shape == (2, a.num_joints, a.input_size[0] // HEATMAP_STRIDE, a.input_size[1] // HEATMAP_STRIDE)


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


def test_cli_reports_one_line_and_exit_2(tmp_path, capsys):
    d = load("efficientpose_a").to_dict()
    d["blocks"][3]["op"] = "ir_k4_e6"
    (tmp_path / "bad.json").write_text(json.dumps(d))
    (tmp_path / "broken.yaml").write_text("blocks: [oops\n")
    for name, what in (("bad.json", "blocks[3].op"), ("broken.yaml", "malformed"), ("missing.yaml", "no such file")):
        path = tmp_path / name
        assert model_cli.main(["check", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert str(path) in err and what in err


def test_info_cli_prints_family(capsys):
    assert model_cli.main(["info", "efficientpose_a", "--family", "1", "--head", "mbv1", "--input", "128x96"]) == 0
    out = capsys.readouterr().out
    assert "phi=1" in out and "GMAC" in out and " 128x96 " in out


def test_python_m_model_runs(root):
    """The one spawned interpreter: `python -m model` is wired to the same main."""
    r = subprocess.run([sys.executable, "-m", "model", "check", "efficientpose_a"], cwd=root, capture_output=True,
                       text=True, check=True)
    assert "efficientpose_a: ok" in r.stdout


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


def test_arch_is_frozen_and_replace_revalidates():
    a = load("efficientpose_a")
    for obj, attr, value in ((a, "input_size", (64, 48)), (a.head, "type", "mbv1"), (a.blocks[0], "op", "skip"),
                             (a, "blocks", [])):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, value)
    with pytest.raises(TypeError):
        a.meta["reported"] = {}  # meta is read-only too, nested mappings included
    with pytest.raises(TypeError):
        a.meta["reported"]["coco"] = 1
    with pytest.raises(AttributeError):
        a.blocks.append(a.blocks[0])
    b = a.replace(input_size=(64, 48), head=a.head.replace(type="mbv1"))
    assert (b.input_size, b.head.type, a.input_size, a.head.type) == ((64, 48), "mbv1", (256, 192), "plain")
    with pytest.raises(UserError, match="input_size: 250x192 is not divisible"):
        a.replace(input_size=(250, 192))
    with pytest.raises(UserError, match="head.deconv"):
        a.replace(head=a.head.replace(deconv=[64]))
    assert from_dict(b.to_dict()) == b and from_dict(b.to_dict()).meta == a.meta
    # a frozen arch still travels: pickled to a spawned worker, deep-copied inside a network, dumped as JSON
    assert pickle.loads(pickle.dumps(a)) == a and copy.deepcopy(build(b)).arch == b
    assert json.loads(json.dumps(a.meta)) == a.to_dict()["meta"]


def test_every_construction_path_validates():
    a = load("efficientpose_a")
    stem, head = a.stem, a.head
    with pytest.raises(UserError, match=r"blocks\[1\]\.op: .*dwconv_k3.* is not a block op"):
        Arch("x", 17, (64, 48), stem, [a.blocks[0], Layer("dwconv_k3", 24)] + list(a.blocks[2:]), head)
    with pytest.raises(UserError, match=r"stem\[0\]\.op: .*skip.* is not a stem layer op"):
        Arch("x", 17, (64, 48), [Layer("skip", 3)], a.blocks, head)
    with pytest.raises(UserError, match="op: op 'ir_k4_e6': kernel must be odd"):
        Layer("ir_k4_e6", 24)
    with pytest.raises(UserError, match="stride must be 1 or 2"):
        Layer("ir_k3_e6", 24, 3)
    with pytest.raises(UserError, match="act: unknown activation 'gelu'"):
        Layer("ir_k3_e6", 24, 1, "gelu")
    with pytest.raises(UserError, match="type: unknown head type 'fpn'"):
        Head("fpn")
    with pytest.raises(UserError, match="num_joints: expected an integer >= 1"):
        a.replace(num_joints=0)
    with pytest.raises(UserError, match="act: unknown activation 'none'"):
        a.replace(act="none")  # the arch default must be a real activation; a layer may say none
    with pytest.raises(UserError, match=r"blocks\[0\]\.op: skip needs stride 1"):
        a.replace(blocks=(a.blocks[0].replace(op="skip"),) + a.blocks[1:])
    s = load_space("default")
    with pytest.raises(ValueError, match="not a candidate"):
        s.arch_for(["skip"] * len(s.layers()))
    assert compound_scale(a, 1).replace() == compound_scale(a, 1)  # scaling builds through the same constructor
    assert all(isinstance(x.spec, Op) and x.spec.name == x.op for x in a.stem + a.blocks)  # decoded once


def test_block_act_is_built_as_written():
    a = load("efficientpose_a").replace(input_size=(64, 48))
    blocks = list(a.blocks)
    blocks[1] = blocks[1].replace(act="relu6")
    blocks[2] = blocks[2].replace(act="none")
    b = from_dict(a.replace(blocks=blocks).to_dict())  # and it round-trips through the file form
    assert [x.act for x in b.blocks[:3]] == [None, "relu6", "none"]
    net = build(b)

    def acts(m):
        return [type(x).__name__ for x in m.modules() if isinstance(x, (torch.nn.ReLU, torch.nn.ReLU6))]

    assert acts(net.backbone.blocks[0]) == ["ReLU", "ReLU"]
    assert acts(net.backbone.blocks[1]) == ["ReLU6", "ReLU6"]
    assert acts(net.backbone.blocks[2]) == []
    assert acts(build(a.replace(act="relu6")).backbone.blocks[0]) == ["ReLU6", "ReLU6"]
    assert compound_scale(b, 1).blocks[1].act == "relu6"
    # the part device_bench times for a block's LUT entry is that block as built (the key leaves act out: see
    # model.latency.block_key)
    from device_bench.parts import arch_parts

    parts = [p for p in arch_parts(b).values() if p.kind == "block"]
    assert [acts(p.module()) for p in parts[:3]] == [["ReLU", "ReLU"], ["ReLU6", "ReLU6"], []]


def test_one_notion_of_stages(tmp_path):
    s = load_space("default")
    assert s.stages == (Stage(4, 24, 2), Stage(6, 32, 2), Stage(8, 64, 2), Stage(8, 96, 1))
    assert s.arch_for(s.random_choices(random.Random(0))).stages == s.stages
    assert load("efficientpose_a").stages == s.stages  # EfficientPose-A is an arch of the default space
    d = yaml.safe_load((SPACE_DIR / "default.yaml").read_text())
    d["stages"].insert(1, {"layers": 2, "out": 24, "stride": 1})  # continues the stage before: not a stage
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(UserError, match=r"s\.yaml: stages\[1\]: a stage begins with a stride or width change"):
        load_space(tmp_path / "s.yaml")
