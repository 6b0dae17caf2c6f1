"""The search stage: the LUT steers the derived arch, the arch file round-trips, a killed search resumes exactly,
a target is hit, a family of targets is derived, the accuracy signal reaches alpha, a crafted state file is refused.

Tiny runs (64x48 input, 16 persons, 2 epochs, 1 CPU thread) on the bundled COCO subset; the relations tested do
not depend on size. Synthetic LUTs are written here with the space's exact keys (model.latency's file format).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.arch import load
from model.latency import load_lut, parse_key
from model.net import build
from model.space import load_space
from posekit.keypoints import DEFAULT_COCO
from search.__main__ import main
from search.cost import flops_cost, load_cost
from search.data import search_halves, split_by_image
from search.derive import closest_to_target, derive
from search.loop import Config, Search

SPACE = load_space("default")
# 16 persons -> two halves of 8 -> 2 steps of batch 4 per epoch; alpha's Adam at lr 0.1 settles in ~6 steps.
TINY = dict(input_size=(64, 48), limit=16, epochs=3, warmup_epochs=0, batch_size=4, alpha_lr=0.1, time_steps=False)


pytestmark = pytest.mark.usefixtures("one_thread_module")


def write_lut(path, cost_of, device="synthetic"):
    """A LUT file over every key of the default space; cost_of(parsed key) -> ms (fixed parts: 2 ms)."""
    entries = {}
    for k in SPACE.lut_keys():
        d = parse_key(k)
        ms = cost_of(d) if "|s=" in k and ":" not in d["op"] else 2.0
        entries[k] = {"median_ms": float(ms), "mean_ms": float(ms), "std_ms": 0.0, "n": 1}
    header = {"device": device, "backend": "synthetic", "runtime": "none", "precision": "fp32",
              "provenance": "synthetic (test)", "search_space": SPACE.name, "search_space_sha256": SPACE.sha256}
    path.write_text(json.dumps({"header": header, "entries": entries}))
    return str(path)


def kernel_cost(order):
    """k3/k5/k7 cost from `order` (e.g. {3: 1, 5: 2, 7: 3}), e6 a bit dearer than e3, skip dearer than all."""
    def cost(d):
        if d["op"] == "skip":
            return 10.0
        k, e = (int(v[1:]) for v in d["op"].split("_")[1:])
        return order[k] + 0.1 * e
    return cost


def macs_like(d):
    """A plausible device: pointwise + depthwise work of the block, skip almost free."""
    if d["op"] == "skip":
        return 0.01
    k, e = (int(v[1:]) for v in d["op"].split("_")[1:])
    h, w, c = d["in"]
    hw = h * w / d["s"] ** 2
    return 1e-6 * (h * w * c * c * e + hw * c * e * k * k + hw * c * e * d["out"])


def search(tmp_path, device, name, cli=False, until=None, **kw):
    """A tiny search; cli=True goes through everything the CLI does (plot, step times, files)."""
    cfg = Config(device=device, out=str(tmp_path / name), **{**TINY, **kw})
    if cli:
        from search.cli import run_search

        s, arch, _ = run_search(cfg, quiet=True)
        return s, arch
    s = Search(cfg)
    s.run(until=until)
    return s, derive(s)


def extremes(lut):
    c = load_cost(lut, SPACE)
    return (c.fixed + sum(float(t.min()) for t in c.tables), c.fixed + sum(float(t.max()) for t in c.tables))


@pytest.fixture(scope="module")
def macs_lut(tmp_path_factory):
    return write_lut(tmp_path_factory.mktemp("lut") / "dev.json", macs_like)


@pytest.fixture(scope="module")
def lam_runs(macs_lut, tmp_path_factory):
    """Same seed, lambda 0 vs lambda 5 (the latter through the CLI path: files, plot, step times)."""
    tmp = tmp_path_factory.mktemp("lam")
    return search(tmp, macs_lut, "lam0", lam=0.0), search(tmp, macs_lut, "lam5", lam=5.0, cli=True, time_steps=True)


def test_split_is_disjoint_by_image():
    w, a = search_halves(DEFAULT_COCO, (64, 48), 17)
    imgs = [s["image_id"] for s in w.dataset.samples]
    assert set(imgs[i] for i in w.indices).isdisjoint(imgs[i] for i in a.indices)
    assert abs(len(w) - len(a)) <= 3 and len(w) + len(a) == len(imgs)
    assert split_by_image([5, 5, 6, 7, 7, 7]) == ([3, 4, 5], [0, 1, 2])


@pytest.mark.slow(17)
def test_large_lambda_gives_strictly_lower_latency(lam_runs, macs_lut):
    (_, free), (_, cheap) = lam_runs
    assert cheap.meta["lut_latency_ms"] < free.meta["lut_latency_ms"]
    # The latency term dominating: every layer took its cheapest candidate.
    assert cheap.meta["lut_latency_ms"] == pytest.approx(extremes(macs_lut)[0], rel=1e-6)


@pytest.mark.slow(9)
def test_opposite_luts_lead_to_opposite_choices(tmp_path):
    fast_k3 = write_lut(tmp_path / "k3.json", kernel_cost({3: 1.0, 5: 2.0, 7: 3.0}))
    fast_k7 = write_lut(tmp_path / "k7.json", kernel_cost({3: 3.0, 5: 2.0, 7: 1.0}))
    _, a = search(tmp_path, fast_k3, "k3", lam=1.0)
    _, b = search(tmp_path, fast_k7, "k7", lam=1.0)
    assert all(x.op.startswith("ir_k3_") for x in a.blocks), [x.op for x in a.blocks]
    assert all(x.op.startswith("ir_k7_") for x in b.blocks), [x.op for x in b.blocks]
    assert b.meta["flops"] > a.meta["flops"]  # the search followed the LUT, not FLOPs


def test_derived_arch_file_round_trips_and_builds(lam_runs, macs_lut):
    s, arch = lam_runs[1]
    lut = macs_lut
    out = Path(s.cfg.out)
    back = load(out / "arch.yaml")
    assert back.to_dict() == arch.to_dict()
    assert back.meta["lut_latency_ms"] == pytest.approx(load_lut(lut, SPACE).latency(back), abs=1e-3)
    for k in ("expected_latency_ms", "flops", "params", "step_times", "convergence", "supernet_val_loss"):
        assert k in back.meta
    st = back.meta["step_times"]
    assert st["paths"] == "sample" and st["ratio"] > 0 and st["search_step_s"] > 0 and st["train_step_s"] > 0
    assert "efficientpose_a" in st["reference"] and "search_step_peak_mb" in st
    net = build(back).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 64, 48)).shape == (1, 17, 16, 12)
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["epochs"]) == TINY["epochs"] and len(hist["epochs"][0]["probs"]) == len(SPACE.layers())
    assert (out / "alpha_history.png").stat().st_size > 10_000 and (out / "search.log").is_file()


@pytest.mark.slow(10)
def test_resume_replays_the_uninterrupted_run(tmp_path, macs_lut):
    lut = macs_lut
    # Sampled paths (the default), an annealed temperature and a target: every random draw and lambda replay.
    kw = dict(lam=0.0, warmup_epochs=1, temperature_end=0.5, target_ms=extremes(lut)[0] * 1.5)
    whole, _ = search(tmp_path, lut, "whole", epochs=3, **kw)
    search(tmp_path, lut, "cut", epochs=3, until=2, **kw)  # "killed" after epoch 2 (mid-search): its state.pt
    resumed, _ = search(tmp_path, lut, "cut", epochs=3, resume=True, **kw)
    assert resumed.epoch == 3 and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.lam == pytest.approx(whole.lam, abs=1e-12)
    for x, y in zip(whole.net.alphas, resumed.net.alphas):
        assert torch.allclose(x, y, atol=1e-6)
    assert whole.net.choices() == resumed.net.choices()
    w, r = whole.net.state_dict(), resumed.net.state_dict()
    assert all(torch.allclose(w[k].float(), r[k].float(), atol=1e-5) for k in w)


def test_target_latency_drives_lambda(tmp_path, macs_lut):
    lo, hi = extremes(macs_lut)
    s, _ = search(tmp_path, macs_lut, "lo", lam=0.0, target_ms=lo * 1.02, epochs=1)
    assert s.lam > 0  # the derived arch is above a target near the floor: lambda grew
    s, _ = search(tmp_path, macs_lut, "hi", lam=0.0, target_ms=hi * 0.98, epochs=1)
    assert s.lam < 0  # below a target near the ceiling: lambda went negative, pricier ops are preferred


def test_target_derive_lands_near_the_target(tmp_path, macs_lut):
    lo, hi = extremes(macs_lut)
    target = lo + 0.4 * (hi - lo)
    s, arch = search(tmp_path, macs_lut, "mid", lam=0.0, target_ms=target, epochs=1)
    assert arch.meta["lut_latency_ms"] == pytest.approx(target, rel=0.03)
    assert arch.meta["target"]["target"] == pytest.approx(target, abs=1e-4)
    assert arch.meta["search"]["target_ms"] == target
    assert len(arch.meta["target"]["argmax_blocks"]) == 26


def test_closest_to_target_is_the_most_probable_arch_within_tolerance():
    import itertools

    g = torch.Generator().manual_seed(0)
    tables = [torch.rand(3, generator=g) * 10 for _ in range(5)]
    logp = [torch.log_softmax(torch.randn(3, generator=g), 0) for _ in range(5)]
    target, tol = 1.0 + 25.0, 0.05
    idx, cost = closest_to_target(logp, tables, 1.0, target, tol=tol, bins=20000)
    combos = [(sum(float(t[i]) for t, i in zip(tables, c)) + 1.0, sum(float(lp[i]) for lp, i in zip(logp, c)), c)
              for c in itertools.product(range(3), repeat=5)]
    ok = [x for x in combos if abs(x[0] - target) <= tol * target]
    assert ok and tuple(idx) == max(ok, key=lambda x: x[1])[2]
    assert cost == pytest.approx(max(ok, key=lambda x: x[1])[0])


def test_flops_cost_sums_to_the_network_flops():
    from model.flops import count_flops

    c = flops_cost(SPACE)
    for choices in ([x.candidates[0] for x in SPACE.layers()], [x.candidates[-1] for x in SPACE.layers()]):
        assert c.of(SPACE, choices) == pytest.approx(count_flops(SPACE.arch_for(choices))["flops"] / 1e6, rel=1e-6)
    row = dict(zip(SPACE.layers()[1].candidates, c.tables[1].tolist()))
    assert row["skip"] == 0 and row["ir_k3_e3"] < row["ir_k7_e3"] < row["ir_k7_e6"]
    assert load_cost("flops", SPACE).unit == "MFLOPs"


@pytest.mark.slow(18)
def test_torchrun_two_processes(tmp_path, macs_lut):
    """Data parallel over gloo: 2 ranks, each half of every batch; rank 0 writes the files."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "search", "--device",
           macs_lut, "--input", "64x48", "--epochs", "2", "--warmup-epochs", "1", "--limit", "16",
           "--batch-size", "4", "--no-step-times", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert load(out / "arch.yaml").meta["search"]["epochs"] == 2
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())["epochs"]] == [1, 2]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    other = write_lut(tmp_path / "other.json", macs_like)
    d = json.loads(open(other).read())
    d["header"]["search_space_sha256"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(d))
    cases = [(["--device", "nodevice"], "no LUT for device 'nodevice'"),
             (["--device", str(tmp_path / "missing.json")], "missing.json: no such LUT file"),
             (["--device", "flops", "--targets", "1x,fast"], "--targets"),
             (["--device", str(bad)], "corrupt LUT file"),
             (["--device", other], "built for search space"),
             (["--device", "flops", "--input", "100x96"], "--input"),
             (["--device", "flops", "--out", str(tmp_path / "none"), "--resume"], "nothing to resume")]
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and "\n" not in err, err
    assert not (tmp_path / "none" / "arch.yaml").exists()


class Payload:
    """What a crafted state.pt carries: unpickling it would call os.system (touch a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_crafted_state_file_is_refused_and_never_run(tmp_path, capsys, macs_lut):
    out, marker = tmp_path / "evil", tmp_path / "ran"
    out.mkdir()
    cfg = Config(device=macs_lut, out=str(out), **TINY)
    torch.save({"config": cfg.key(), "epoch": 1, "net": Payload(marker)}, out / "state.pt")
    argv = ["--device", macs_lut, "--out", str(out), "--resume", "--input", "64x48", "--limit", "16",
            "--batch-size", "4", "--epochs", "3", "--warmup-epochs", "0", "--no-step-times"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "state.pt" in err and "refused" in err and "\n" not in err, err
    assert not marker.exists()  # the payload did not run
    assert not (out / "arch.yaml").exists()


def test_lambda_zero_keeps_capacity_and_a_lower_supernet_loss(lam_runs):
    """The accuracy signal reaches alpha: without the cost term the search keeps larger ops (fewer skips, more
    FLOPs) than with a dominating one, and its supernet's validation loss on the derived path is lower."""
    (_, free), (_, cheap) = lam_runs
    skips = lambda a: sum(b.op == "skip" for b in a.blocks)  # noqa: E731
    assert skips(free) < skips(cheap)
    assert free.meta["flops"] > cheap.meta["flops"]
    assert free.meta["supernet_val_loss"] < cheap.meta["supernet_val_loss"]


@pytest.mark.slow(10)
def test_default_target_and_a_family_of_targets(tmp_path, macs_lut, capsys):
    """Without --lam the CLI searches for EfficientPose-A's cost on the same LUT (printed) and lands within 10%;
    --targets derives one arch per target from the same supernet, ordered like the targets, and the family plot."""
    out = tmp_path / "fam"
    argv = ["--device", macs_lut, "--out", str(out), "--input", "64x48", "--limit", "16", "--batch-size", "4",
            "--epochs", "3", "--warmup-epochs", "1", "--no-step-times", "--targets", "0.6x,0.8x,1x"]
    assert main(argv) == 0
    log = (out / "search.log").read_text()
    ref = load_cost(macs_lut, SPACE).of(SPACE, [b.op for b in load("efficientpose_a").blocks])
    assert f"target: {ref:.2f} ms" in log and "convergence" in log
    arch = load(out / "arch.yaml")
    assert arch.meta["search"]["target"] == pytest.approx(ref, rel=1e-4)
    assert arch.meta["lut_latency_ms"] == pytest.approx(ref, rel=0.10)
    lat = []
    for r in (0.6, 0.8, 1.0):
        a = load(out / f"arch_{r:g}x.yaml")
        assert a.meta["lut_latency_ms"] == pytest.approx(r * ref, rel=0.10)
        lat.append(a.meta["lut_latency_ms"])
    assert lat == sorted(lat) and len(set(lat)) == 3
    assert (out / "family.png").stat().st_size > 10_000
