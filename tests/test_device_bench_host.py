"""Host backend on real parts: deploy -> litert-torch -> ai_edge_litert, resume after a kill, setup checks."""

import json

import pytest

from device_bench import host, lutfile
from device_bench.cli import main
from device_bench.lut import select_parts
from model.latency import LUT, load_lut, network_keys
from model.space import load_space
from posekit.errors import UserError
from runtime.tflite_flatbuffer import op_counts

KEY = "ir_k3_e3|in=16x12x64|out=64|s=1"


def header(space, threads=1):
    return lutfile.make_header("host", space, backend="host-litert", runtime="ai_edge_litert Interpreter",
                               runtime_version="test", threads=threads, precision="fp32", kernels="xnnpack",
                               provenance="measured")


@pytest.mark.slow(33)  # ten real conversions and timings
def test_quick_lut_resumes_after_kill_and_second_run_measures_nothing(tmp_path, monkeypatch, capsys):
    """`lut --device host --quick` (10 keys), killed after its first chunk of 4, then run again twice."""
    out, cache = tmp_path / "host.json", tmp_path / "cache"
    argv = ["lut", "--device", "host", "--quick", "--out", str(out), "--cache", str(cache), "--rounds", "2",
            "--per-visit", "2", "--chunk", "4", "--kernels", "xnnpack"]
    real_rr, chunks = host.round_robin, []

    def killed_in_second_chunk(runners, **kw):
        chunks.append(list(runners))
        if len(chunks) == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C in the middle of the run
        return real_rr(runners, **kw)

    monkeypatch.setattr(host, "round_robin", killed_in_second_chunk)
    assert main(argv) == 130
    saved = json.loads(out.read_text())["entries"]
    assert set(saved) == set(chunks[0]) and len(saved) == 4  # the finished chunk, saved atomically
    assert not list(tmp_path.glob(".host.json*"))  # no half-written temp left behind
    n_converted = len(list(cache.rglob("*.tflite")))
    assert n_converted == 8  # chunk 2 was converted before the kill: kept in the cache

    monkeypatch.setattr(host, "round_robin", real_rr)
    assert main(argv) == 0
    assert "10 keys, 6 measured by this run, 0 missing" in capsys.readouterr().out
    lut = load_lut(out)
    quick = load_space("default").arch_for(["ir_k3_e3"] * 26)
    assert not lut.missing(network_keys(quick)) and lut.latency(quick) > 0
    assert all(e["median_ms"] > 0 and e["n"] == 4 and e["std_ms"] >= 0 for e in lut.entries.values())
    assert lut.stat == "min_ms" and all(0 < e["min_ms"] <= e["median_ms"] for e in lut.entries.values())
    h = lut.header
    assert (h["device"], h["precision"], h["kernels"], h["threads"], h["provenance"]) == \
        ("host", "fp32", "xnnpack", 1, "measured")
    assert main(argv) == 0  # third run: nothing left
    assert "10 keys, 0 measured by this run, 0 missing" in capsys.readouterr().out
    # what was timed is the deployed block: BN folded into the convs, nothing but the block's own ops
    part = select_parts("default", quick=True)[1]["ir_k3_e3|in=64x48x24|out=24|s=1"]
    assert op_counts(host.convert_part(part, "fp32", cache)) == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "ADD": 1}
    assert len(list(cache.rglob("*.tflite"))) == 10  # served from the cache, not converted again


def test_other_setup_is_refused_unless_fresh(tmp_path):
    space = load_space("default")
    path = tmp_path / "host.json"
    LUT(header(space, threads=1), {KEY: {"median_ms": 1.0, "mean_ms": 1.0, "std_ms": 0.0, "n": 3}}, path).save()
    with pytest.raises(UserError, match="threads=1.*threads=4.*--fresh"):
        lutfile.open_for_update(path, header(space, threads=4))
    assert lutfile.open_for_update(path, header(space, threads=4), fresh=True).entries == {}
    path.write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        lutfile.open_for_update(path, header(space))


def test_bad_luts_give_one_clear_error(tmp_path, capsys):
    space = load_space("default")
    arch = space.arch_for(["ir_k3_e3"] * len(space.layers()))
    with pytest.raises(UserError, match=r"key\(s\) missing.*make lut DEVICE=host"):
        LUT(header(space), {}, tmp_path / "x.json").latency(arch)
    other = tmp_path / "other.json"
    LUT(header(space) | {"search_space_sha256": "0000000000000000"}, {}, other).save()
    with pytest.raises(UserError, match="search space"):
        load_lut(other, space)
    # fidelity with a LUT of another device, or one missing keys: one line, exit 2
    host_lut = tmp_path / "host.json"
    LUT(header(space), {}, host_lut).save()
    assert main(["fidelity", "--device", "host-int8", "--lut", str(host_lut), "--n", "3"]) == 2
    err = capsys.readouterr().err
    assert "for device 'host', not 'host-int8'" in err and err.count("\n") == 1
    assert main(["fidelity", "--device", "host", "--lut", str(host_lut), "--n", "3"]) == 2
    assert "missing" in capsys.readouterr().err
