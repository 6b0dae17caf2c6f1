"""Whole-model bench on real .tflite files, and the fidelity statistics (relations that hold on any machine)."""

import json

import numpy as np
import pytest

from device_bench import host, lut_accuracy
from device_bench.cli import main
from device_bench.lut import select_parts
from model.space import load_space

KEY = "ir_k3_e3|in=16x12x64|out=64|s=1"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A real artifacts folder: one block as fp32 and int8 tflite, with a manifest in the contract's form."""
    d = tmp_path_factory.mktemp("artifacts") / "block"
    part = select_parts("default", with_shipped=False)[1][KEY]
    from types import SimpleNamespace

    from model.arch import dump, load
    from posekit import manifest
    from runtime.tflite import io_details

    arts = []
    for precision in ("fp32", "int8"):
        src = host.convert_part(part, precision, cache=d.parent / "cache")
        dst = d / "tflite" / f"model_{precision}.tflite"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        io = io_details(dst)
        arts.append(manifest.artifact(d, dst, "tflite", precision, None, [
            {**x, "layout": "NHWC", "kind": "tensor", "normalization_folded": False} for x in io["inputs"]],
            [{**x, "layout": "NHWC"} for x in io["outputs"]]))
    arch = load("efficientpose_a")  # the manifest's header (the contract's form); the artifacts are one block
    src = SimpleNamespace(arch=arch, checkpoint=None, checkpoint_sha256=None, arch_origin="test",
                          random_init=True, note="one block")
    manifest.write(d, manifest.header(src, dump(arch, d / "arch.yaml")), arts)
    return d


def test_bench_one_model_prints_median_p90_and_census(artifacts, capsys):
    assert main(["bench", "--model", str(artifacts / "tflite" / "model_fp32.tflite"), "--runs", "10"]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "p90 ms" in out and "model_fp32.tflite [xnnpack]" in out
    assert "CONV_2D:float32 x2" in out and "DEPTHWISE_CONV_2D:float32 x1" in out


def test_bench_model_dir_interleaves_fp32_int8_xnnpack_and_builtin(artifacts, capsys):
    assert main(["bench", "--model-dir", str(artifacts), "--runs", "10", "--warmup", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("model_fp32.tflite fp32 [xnnpack]", "model_fp32.tflite fp32 [builtin]",
                 "model_int8.tflite int8 [xnnpack]", "model_int8.tflite int8 [builtin]"):
        assert name in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("tflite/")]
    assert all(float(r[-4]) <= float(r[-3]) for r in rows)  # median <= p90


def test_bench_bad_inputs(tmp_path, capsys):
    assert main(["bench", "--model-dir", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [{"file": "x.tflite", "format": "tflite",
                                                                       "precision": "fp32"}]}))
    assert main(["bench", "--model-dir", str(tmp_path)]) == 2
    assert "x.tflite is missing" in capsys.readouterr().err
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer")
    assert main(["bench", "--model", str(tmp_path / "bad.tflite")]) == 2
    assert "damaged .tflite: no TFL3 identifier" in capsys.readouterr().err  # runtime.artifact_check, before loading


def test_fidelity_statistics():
    meas = np.array([10.0, 12.0, 15.0, 20.0, 30.0])
    s = lut_accuracy.stats(meas * 1.1, meas)
    assert s["mape_pct"] == pytest.approx(10.0) and s["spearman"] == pytest.approx(1.0)
    assert lut_accuracy.stats(meas[::-1].copy(), meas)["spearman"] == pytest.approx(-1.0)
    pred = (meas - 2.0) / 1.5  # the LUT sums parts: off by a scale and an offset
    cal = lut_accuracy.linear_calibration(pred, meas)
    assert cal["scale"] == pytest.approx(1.5) and cal["offset_ms"] == pytest.approx(2.0)
    assert cal["mape_pct"] == pytest.approx(0, abs=1e-9) and cal["loo_mape_pct"] == pytest.approx(0, abs=1e-6)


def test_fidelity_samples_are_reproducible_archs_of_the_space(tmp_path):
    space = load_space("default")
    a, b = lut_accuracy.sample_archs(space, 5, seed=3), lut_accuracy.sample_archs(space, 5, seed=3)
    assert [x.blocks for x in a] == [x.blocks for x in b]
    assert len({tuple(y.op for y in x.blocks) for x in a}) == 5
    png = lut_accuracy.scatter(tmp_path / "f.png", [1, 2, 3], [1.1, 2.2, 2.9], "t", {"scale": 1.0, "offset_ms": 0.1})
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_round_robin_interleaves_and_cpu_clock_leaves_out_waiting():
    import time

    from device_bench.timing import check_clock, round_robin
    from posekit.errors import UserError

    order = []
    runners = {k: (lambda k=k: (order.append(k), time.sleep(0.004))) for k in "abc"}
    wall = round_robin(runners, rounds=3, per_visit=2, warmup=1, clock="wall")
    assert {k: len(v) for k, v in wall.items()} == {"a": 6, "b": 6, "c": 6}
    assert len(order) == 3 + 18 and set(order[3:9]) == set("abc")  # every op visited in each round
    assert min(min(v) for v in wall.values()) >= 4.0  # a sleep is latency ...
    cpu = round_robin(runners, rounds=2, per_visit=2, warmup=0, clock="cpu")
    assert max(max(v) for v in cpu.values()) < 4.0  # ... but no CPU time
    with pytest.raises(UserError, match="--threads 1"):
        check_clock("cpu", 4)


def test_bench_model_dir_prints_the_fastest_kernels_and_each_files_op_profile(artifacts, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "--model-dir", str(artifacts), "--runs", "5", "--warmup", "1", "--json",
                 str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "fastest kernels: " in out and "int8 / fp32: " in out
    assert "per-op profile, host model_int8.tflite [xnnpack]" in out and "sum/model" in out
    res = json.loads(out_json.read_text())
    assert set(res["fastest_kernels"]) == {"tflite/model_fp32.tflite", "tflite/model_int8.tflite"}
    assert {(p["file"].rsplit("/", 1)[-1], p["kernels"]) for p in res["profiles"]} == {
        (f"model_{q}.tflite", k) for q in ("fp32", "int8") for k in ("xnnpack", "builtin")}
    assert all(p["ratio"] > 0 and p["ops"] for p in res["profiles"])


def test_bench_kernels_auto_times_each_file_on_its_chosen_set(artifacts, tmp_path, capsys):
    """--kernels auto (what the closed loop runs as a step): each file timed once, on the set fastest_kernels picks
    (printed with every set's time); a named set: that set only."""
    from runtime.tflite_kernels import KERNEL_SETS

    out_json = tmp_path / "bench.json"
    assert main(["bench", "--model-dir", str(artifacts), "--runs", "5", "--warmup", "1", "--no-profile",
                 "--kernels", "auto", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert out.count("kernels auto: ") == 2
    res = json.loads(out_json.read_text())
    assert res["kernels_option"] == "auto" and len(res["results"]) == 2
    assert all(r["kernels"] in KERNEL_SETS for r in res["results"])
    assert main(["bench", "--model-dir", str(artifacts), "--runs", "5", "--warmup", "1", "--no-profile",
                 "--kernels", "builtin"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("tflite/")]
    assert len(rows) == 2 and all("[builtin]" in r for r in rows)
