"""The neck as a search choice (issue 29): a space offering it (model/spaces/neck.yaml) is priced by the LUT (each
candidate's neck and the head it needs), searched with its own alpha, and derived into the arch file's `neck:` field;
the LUT decides whether the neck earns its latency. Bad `neck:` sections of a space give one line naming the field.

Tiny searches (64x48 input, 16 persons, 3 epochs, 1 thread) on the bundled COCO subset, on synthetic LUTs that
price the neck away or make it the cheap path; the real phone profiles are checked to cover the neck space.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from device_bench import lutfile
from device_bench.lut import select_parts
from model.arch import load
from model.flops import count_flops
from model.latency import LUT, head_key, load_lut, neck_key
from model.net import build
from model.space import SPACE_DIR, load_space
from posekit.errors import UserError
from search.__main__ import main
from search.cost import flops_cost, in_space, load_cost
from search.derive import derive, write
from search.loop import Config, Search

NECK = load_space("neck")
DEFAULT = load_space("default")
TINY = dict(input_size=(64, 48), limit=16, epochs=3, warmup_epochs=0, batch_size=4, alpha_lr=0.1, time_steps=False)
PHONES = ("pixel", "pixel4", "pixel6", "xiaomi11", "note10")

pytestmark = pytest.mark.usefixtures("one_thread_module")


def write_lut(path, cost_of):
    """A synthetic LUT over every key of the neck space: cost_of(key) -> ms."""
    entries = {k: {"median_ms": float(cost_of(k)), "mean_ms": float(cost_of(k)), "std_ms": 0.0, "n": 1}
               for k in NECK.lut_keys()}
    header = {"device": "synthetic", "backend": "synthetic", "runtime": "none", "precision": "fp32",
              "provenance": "synthetic (test)", "search_space": NECK.name, "search_space_sha256": NECK.sha256}
    path.write_text(json.dumps({"header": header, "entries": entries}))
    return str(path)


def pixel_with(tmp_path, name, change):
    """A copy of the shipped pixel profile with some entries re-priced: change(key, ms) -> ms."""
    d = json.loads(load_lut("pixel").path.read_text())
    for k, e in d["entries"].items():
        ms = change(k, e["median_ms"])
        e.update(median_ms=ms, mean_ms=ms)
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(d))
    return str(p)


def neck_argmax(s) -> str:
    return NECK.neck.candidates[int(s.net.alphas[-1].argmax())]


def tiny_search(tmp_path, lut, name, **kw):
    s = Search(Config(device=lut, space="neck", out=str(tmp_path / name), **{**TINY, **kw}))
    s.run()
    return s, derive(s)


def test_neck_space_is_the_default_space_plus_the_neck_choice():
    assert NECK.decisions()[:-1] == DEFAULT.decisions()
    assert NECK.decisions()[-1] == ("none", "bifpn_w32", "bifpn_w64")
    assert set(DEFAULT.lut_keys()) < set(NECK.lut_keys())
    a = NECK.arch_for(NECK.first_choices("bifpn_w32"))
    assert a.neck.width == 32 and a.neck.levels == (4, 8, 16) and a.head.deconv == ()
    assert NECK.arch_for(NECK.first_choices("none")).head == DEFAULT.head
    assert in_space(a, NECK) == NECK.first_choices("bifpn_w32") and in_space(a, DEFAULT) is None
    with pytest.raises(ValueError, match="neck"):
        NECK.arch_for(DEFAULT.first_choices())  # one choice per decision: the neck's too


@pytest.mark.parametrize("device", PHONES)
def test_phone_profiles_price_every_neck_candidate(device):
    """The shipped profiles serve both spaces; each neck candidate costs its neck plus its head, and the whole
    network's LUT latency is the cost model's sum."""
    lut = load_lut(device, NECK)
    assert load_lut(device, DEFAULT).path == lut.path
    c = load_cost(device, NECK)
    assert len(c.tables) == len(NECK.layers()) + 1
    rng = __import__("random").Random(0)
    for name in NECK.neck.candidates:
        choices = NECK.random_choices(rng)[:-1] + [name]
        a = NECK.arch_for(choices)
        want = lut.ms(head_key(a)) + (lut.ms(neck_key(a)) if a.neck else 0.0)
        assert float(c.tables[-1][NECK.neck.candidates.index(name)]) == pytest.approx(want, rel=1e-6)
        assert c.of(NECK, choices) == pytest.approx(lut.latency(a), rel=1e-6)
    # the default space on the same table: the costs it always had (no neck table, head in the fixed part)
    d = load_cost(device, DEFAULT)
    assert len(d.tables) == len(DEFAULT.layers()) and all(torch.equal(x, y) for x, y in zip(d.tables, c.tables))


@pytest.mark.slow(15)
def test_flops_cost_of_every_neck_candidate_is_the_network_flops():
    c = flops_cost(NECK)
    for pick, name in enumerate(NECK.neck.candidates):
        choices = [x.candidates[-pick] for x in NECK.layers()] + [name]
        assert c.of(NECK, choices) == pytest.approx(count_flops(NECK.arch_for(choices))["flops"] / 1e6, rel=1e-6)
    row = c.tables[-1].tolist()
    assert row[1] < row[2]  # the wider neck costs more


def test_lut_parts_include_every_neck_candidate():
    """`python -m device_bench lut --space neck` (and predict) time each candidate's neck and head."""
    _, parts, _ = select_parts("neck", with_shipped=False)
    for name in NECK.neck.candidates:
        a = NECK.arch_for(NECK.first_choices(name))
        assert head_key(a) in parts and (neck_key(a) in parts if a.neck else True)
        assert neck_key(a) is None or parts[neck_key(a)].kind == "neck"
    space, both, _ = select_parts("default,neck", with_shipped=False)
    assert space == DEFAULT and set(NECK.lut_keys()) <= set(both)


def test_a_lut_serves_the_spaces_its_header_lists(tmp_path):
    entries = {k: {"median_ms": 0.0 if k.startswith("skip") else 1.0, "mean_ms": 0.0 if k.startswith("skip")
                   else 1.0, "std_ms": 0.0, "n": 1} for k in NECK.lut_keys()}
    kw = dict(backend="synthetic", runtime="none", runtime_version=None, threads=1, precision="fp32",
              kernels="none", provenance="synthetic (test)", host="test")
    only_default = tmp_path / "d.json"
    LUT(lutfile.make_header("x", DEFAULT, **kw), entries, only_default).save()
    with pytest.raises(UserError, match="built for search space 'efficientpose-default'"):
        load_lut(only_default, NECK)
    both = tmp_path / "b.json"
    LUT(lutfile.make_header("x", DEFAULT, also_spaces=[NECK], **kw), entries, both).save()
    assert load_lut(both, NECK) and load_lut(both, DEFAULT)


def test_measuring_another_space_into_a_host_lut_keeps_its_entries_and_lists_both(tmp_path):
    """`make lut DEVICE=host SPACE=neck` after the default space's: the same setup, so the table gains the neck
    candidates' keys and serves both spaces (entries are keyed by shape, the space is not a setup field)."""
    def header(space):
        return lutfile.make_header("host", space, backend="host-litert", runtime="ai_edge_litert Interpreter",
                                   runtime_version="test", threads=1, precision="fp32", kernels="xnnpack",
                                   provenance="measured")

    key = DEFAULT.lut_keys()[0]
    path = tmp_path / "host.json"
    LUT(header(DEFAULT), {key: {"median_ms": 1.0, "mean_ms": 1.0, "std_ms": 0.0, "n": 3}}, path).save()
    lut = lutfile.open_for_update(path, header(NECK))
    assert key in lut.entries and lut.header["search_spaces"] == {DEFAULT.name: DEFAULT.sha256,
                                                                  NECK.name: NECK.sha256}


@pytest.mark.slow(25)
def test_the_lut_decides_whether_the_neck_earns_its_latency(tmp_path):
    # the neck enormously expensive on an otherwise real profile: the search drops it
    dear = pixel_with(tmp_path, "dear", lambda k, ms: 5000.0 if k.startswith("neck:") else ms)
    s, a = tiny_search(tmp_path, dear, "dear", lam=1.0)
    assert neck_argmax(s) == "none" and a.neck is None and a.meta["neck_choice"]["none"] > 0.5
    path = write(a, tmp_path / "dear.yaml", s.cost)
    assert "neck:" not in path.read_text().split("\nmeta:")[0] and load(path).neck is None
    # the no-neck path enormously expensive, the wide neck cheapest: the search takes the 64-wide neck
    cheap = write_lut(tmp_path / "cheap.json", lambda k: 0.0 if k.startswith("skip") else
                      5000.0 if k == head_key(NECK.arch_for(NECK.first_choices("none"))) else
                      50.0 if k.startswith(("neck:bifpn_w32", "head:mbv1_d_k4_sic|in=64x48x32")) else 1.0)
    s, a = tiny_search(tmp_path, cheap, "cheap", lam=1.0)
    assert neck_argmax(s) == "bifpn_w64" and a.neck is not None and a.neck.width == 64
    # the derived arch is an arch like any other: its file, the builder, FLOPs and the LUT's price
    back = load(write(a, tmp_path / "cheap.yaml", s.cost))
    assert back.to_dict() == a.to_dict() and back.neck.to_dict() == {"type": "bifpn", "levels": [4, 8, 16],
                                                                      "width": 64, "repeats": 3}
    assert back.meta["lut_latency_ms"] == pytest.approx(load_lut(cheap, NECK).latency(back), abs=1e-3)
    assert count_flops(back)["flops"] == back.meta["flops"]
    with torch.no_grad():
        assert build(back).eval()(torch.zeros(1, 3, 64, 48)).shape == (1, 17, 16, 12)


@pytest.mark.slow(8)
def test_neck_field_follows_the_argmax_on_the_phone_profile(tmp_path):
    s, a = tiny_search(tmp_path, "pixel", "pixel", lam=0.5)
    name = neck_argmax(s)
    assert (a.neck is None) == (name == "none")
    assert a.neck is None or f"{a.neck.type}_w{a.neck.width}" == name
    assert a.meta["lut_latency_ms"] == pytest.approx(load_lut("pixel").latency(a), abs=1e-3)
    assert a.meta["probs"][f"neck:{name}"] == a.meta["neck_choice"][name]


BAD_NECKS = [  # (change to the neck section, the field the one error line names)
    (lambda n: "bifpn", "neck"),
    (lambda n: {**n, "width": 64}, "neck.width"),
    (lambda n: {**n, "candidates": []}, "neck.candidates"),
    (lambda n: {**n, "candidates": ["none", 0]}, "neck.candidates[1]"),
    (lambda n: {**n, "candidates": ["none", "wide"]}, "neck.candidates[1]"),
    (lambda n: {**n, "candidates": [32, "none", 32]}, "neck.candidates[2]"),
    (lambda n: {**n, "candidates": ["none", 100000000]}, "neck.candidates[1]"),  # bounded before it is built
    (lambda n: {**n, "type": "fpn"}, "neck.type"),
    (lambda n: {**n, "levels": [4, 16]}, "neck.levels[1]"),
    (lambda n: {**n, "levels": [8, 16, 32]}, "neck.levels[2]"),
    (lambda n: {**n, "repeats": 99}, "neck.repeats"),
    (lambda n: {k: v for k, v in n.items() if k != "head"}, "neck.head"),
    (lambda n: {**n, "head": {**n["head"], "deconv": [64]}}, "neck.head.deconv"),
    (lambda n: {**n, "head": {**n["head"], "kind": "x"}}, "neck.head.kind"),
]


@pytest.mark.parametrize("change,field", BAD_NECKS, ids=[f for _, f in BAD_NECKS])
def test_bad_neck_sections_give_one_line_naming_the_field(tmp_path, capsys, change, field):
    d = yaml.safe_load((SPACE_DIR / "neck.yaml").read_text())
    d["neck"] = change(d["neck"])
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(UserError) as e:
        load_space(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: {field}: ") and "\n" not in msg, msg
    assert main(["--device", "flops", "--space", str(p), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {p}: {field}: ") and "\n" not in err, err
    assert not (tmp_path / "out").exists()
