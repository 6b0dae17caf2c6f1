"""LUTs that refuse to lie: every entry finite and > 0 (skip exactly 0), every header field present, nonsense
measurement options refused at parse time, and a host LUT from another machine refused by every consumer."""

import json
import math

import pytest

import model.latency as latency
from demo.cli import main as demo_main
from device_bench import lutfile
from device_bench.cli import main as bench_main
from model.latency import ALLOW_FOREIGN_ENV, LUT, host_lut_path, load_lut
from model.space import load_space
from posekit.errors import UserError
from posekit.fingerprint import describe, differences, fingerprint_id, host_fingerprint
from posekit.keypoints import REPO
from search.__main__ import main as search_main


@pytest.fixture(scope="module")
def space():
    return load_space("default")


def host_header(space, device="host", **kw):
    return lutfile.make_header(device, space, backend="host-litert", runtime="ai_edge_litert Interpreter",
                               runtime_version="test", threads=1, precision="int8" if "int8" in device else "fp32",
                               kernels="xnnpack", provenance="measured", **kw)


def full_entries(space, ms=1.0):
    return {k: {"median_ms": 0.0 if latency.is_identity_key(k) else ms, "mean_ms": 0.0 if latency.is_identity_key(k)
                else ms, "std_ms": 0.0, "n": 0 if latency.is_identity_key(k) else 4} for k in space.lut_keys()}


def write_raw(path, header, entries):
    """Bypass LUT.save (which refuses bad entries): the file a broken tool or a hand edit leaves."""
    path.write_text(json.dumps({"header": header, "entries": entries}))  # json writes NaN / Infinity literals
    return path


BLOCK = "ir_k3_e3|in=16x12x64|out=64|s=1"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, 0.0])
def test_bad_entry_refused_by_search_and_fidelity_naming_the_key(bad, space, tmp_path, capsys):
    entries = full_entries(space)
    key = sorted(k for k in entries if not latency.is_identity_key(k))[3]
    entries[key]["median_ms"] = bad
    path = write_raw(tmp_path / "host.json", host_header(space), entries)
    with pytest.raises(UserError, match=r"entries\[.*\]\.median_ms"):
        load_lut(path)
    assert search_main(["--device", str(path), "--out", str(tmp_path / "s"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0] and str(path) in err[0]
    assert bench_main(["fidelity", "--device", "host", "--lut", str(path), "--n", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0]
    assert not (tmp_path / "s" / "arch.yaml").exists()


def test_a_min_statistic_lut_reads_min_ms_and_requires_it(space, tmp_path):
    """Host LUTs hold the fastest of each part's interleaved calls (timing.statistic "min"): latencies are read from
    min_ms, an entry without it is refused naming the key, and an unknown statistic is refused."""
    entries = full_entries(space, ms=2.0)
    for k, e in entries.items():
        e["min_ms"] = 0.0 if latency.is_identity_key(k) else 1.0
    arch = space.arch_for([layer.candidates[0] for layer in space.layers()])
    by_median = load_lut(write_raw(tmp_path / "median.json", host_header(space), entries))
    by_min = load_lut(write_raw(tmp_path / "min.json", host_header(space, timing={"statistic": "min"}), entries))
    assert (by_median.stat, by_min.stat) == ("median_ms", "min_ms")
    assert by_min.latency(arch) == pytest.approx(by_median.latency(arch) / 2)
    del entries[BLOCK]["min_ms"]
    with pytest.raises(UserError, match=r"entries\['ir_k3_e3\|in=16x12x64\|out=64\|s=1'\]\.min_ms: missing"):
        load_lut(write_raw(tmp_path / "a.json", host_header(space, timing={"statistic": "min"}), entries))
    with pytest.raises(UserError, match=r"timing\.statistic: 'p50'"):
        load_lut(write_raw(tmp_path / "b.json", host_header(space, timing={"statistic": "p50"}), entries))


def test_skip_entries_are_exactly_zero_and_headers_complete(space, tmp_path):
    entries = full_entries(space)
    skip = next(k for k in entries if latency.is_identity_key(k))
    entries[skip] = {"median_ms": 0.5, "mean_ms": 0.5, "std_ms": 0.0, "n": 1}
    with pytest.raises(UserError, match=r"skip.*must be 0"):
        load_lut(write_raw(tmp_path / "a.json", host_header(space), entries))
    h = host_header(space)
    del h["kernels"]
    with pytest.raises(UserError, match=r"header is missing kernels"):
        load_lut(write_raw(tmp_path / "b.json", h, full_entries(space)))
    h = host_header(space)
    del h["fingerprint"]
    with pytest.raises(UserError, match=r"header is missing fingerprint"):
        load_lut(write_raw(tmp_path / "c.json", h, full_entries(space)))
    # the writer refuses the same things: nothing is written
    lut = LUT(host_header(space), {BLOCK: {"median_ms": math.nan, "mean_ms": 1.0, "std_ms": 0.0, "n": 3}})
    with pytest.raises(UserError, match=r"median_ms.*not a finite"):
        lut.save(tmp_path / "d.json")
    assert not list(tmp_path.glob("*d.json*"))
    with pytest.raises(UserError, match="no finite timing samples"):
        lutfile.entry([])


@pytest.mark.parametrize("opt", ["--rounds", "--threads", "--chunk", "--per-visit"])
def test_nonsense_measurement_options_refused_before_anything_is_written(opt, tmp_path, capsys):
    out = tmp_path / "host.json"
    rc = bench_main(["lut", "--device", "host", "--quick", "--out", str(out), opt, "0"])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.startswith(f"error: argument {opt}: expected an integer >= 1, got '0'") and len(err.splitlines()) == 1


def test_a_lut_of_another_device_is_refused_by_name_and_taken_by_path(space, tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "LUT_DIR", tmp_path)
    LUT(host_header(space, device="host-int8"), full_entries(space)).save(tmp_path / "pixel4.json")
    with pytest.raises(UserError, match=r"header names device 'host-int8', not 'pixel4'"):
        load_lut("pixel4")
    assert load_lut(tmp_path / "pixel4.json").device == "host-int8"


def test_a_host_lut_of_another_machine_stops_every_consumer_with_one_line(space, tmp_path, monkeypatch, capsys):
    """The acceptance test: this machine's host-int8 LUT file, with its fingerprint edited to another CPU."""
    monkeypatch.setattr(latency, "LUT_DIR", tmp_path)
    monkeypatch.delenv(ALLOW_FOREIGN_ENV, raising=False)
    here = host_fingerprint()
    other = {**here, "cpu_model": "17", "isa": sorted({*here["isa"], "avx512f", "avx512_vnni"})}
    path = host_lut_path("host-int8")
    path.parent.mkdir(parents=True)
    LUT(host_header(space, "host-int8", fingerprint=other), full_entries(space)).save(path)
    # the search (make search DEVICE=host-int8 TARGET_MS=20): one line naming both machines and the fix
    assert search_main(["--device", "host-int8", "--target-ms", "20", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert describe(other) in err[0] and describe(here) in err[0] and "make lut DEVICE=host-int8" in err[0]
    assert "avx512_vnni" in err[0]
    # fidelity, and the search's closed loop: the same line
    assert bench_main(["fidelity", "--device", "host-int8", "--n", "3"]) == 2
    assert "make lut DEVICE=host-int8" in capsys.readouterr().err
    assert demo_main(["closed-loop", "--out", str(tmp_path / "cl")]) == 2
    assert "make lut DEVICE=host-int8" in capsys.readouterr().err
    # the explicit override takes it
    assert load_lut("host-int8", space, allow_foreign=True).device == "host-int8"
    monkeypatch.setenv(ALLOW_FOREIGN_ENV, "1")
    assert load_lut("host-int8", space).device == "host-int8"
    # a phone profile makes no claim about this machine: no fingerprint check
    assert load_lut(REPO / "luts" / "pixel.json", space).header["backend"] == "predicted"


ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp i8mm sve
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


def test_fingerprint_reads_the_isa_that_changes_kernels():
    arm = host_fingerprint(cpuinfo=ARM)
    assert arm["isa"] == ["asimd", "asimddp", "i8mm", "sve"] and arm["cpu_vendor"] == "0x41"
    assert arm["cpu_model"] == "0xd40"
    x86 = host_fingerprint(cpuinfo="vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nstepping\t: 1\n"
                                   "model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx avx2 fma avx512f avx512_vnni\n")
    assert x86["isa"] == ["avx2", "avx512_vnni", "avx512f", "fma"] and x86["cpu_family"] == "25"
    assert fingerprint_id(arm) != fingerprint_id(x86)
    assert any(d.startswith("isa:") for d in differences(x86, {**x86, "isa": ["avx2", "fma"]}))
    # the clock and (single-threaded) the core count are recorded, not compared
    assert differences(x86, {**x86, "clock_mhz": 1, "logical_cores": 64}) == []
    assert differences(x86, {**x86, "logical_cores": 64}, threads=4) != []


TINY = str(REPO / "tests" / "data" / "device_bench" / "tiny_space.yaml")


@pytest.mark.slow(30)  # five real conversions and timings, and the kernel choice's reference net
def test_host_lut_is_measured_on_first_use_then_refined(tmp_path, monkeypatch, capsys):
    from device_bench import host
    from device_bench.lut import ensure_lut

    monkeypatch.setattr(latency, "LUT_DIR", tmp_path / "luts")
    monkeypatch.setattr(host, "CACHE", tmp_path / "cache")
    space = load_space(TINY)
    lut = ensure_lut("host", space)  # what `make search DEVICE=host` does on a machine without its LUT
    assert "no host LUT for this machine yet" in capsys.readouterr().out
    assert lut.path == host_lut_path("host") and lut.path.is_file()
    assert lut.header["fingerprint_id"] == fingerprint_id(host_fingerprint())
    timed = {k: e for k, e in lut.entries.items() if not latency.is_identity_key(k)}
    assert len(timed) == 5 and all(e["n"] == 6 and e["median_ms"] > 0 for e in timed.values())  # the fast pass
    # timed with the fastest kernel set here, chosen on a whole reference net of the space, the choice recorded
    from runtime.tflite_kernels import KERNEL_SETS

    choice = lut.header["kernels_choice"]
    assert lut.header["kernels"] == choice["chosen"] and set(choice["ms"]) == set(KERNEL_SETS)
    assert choice["ms"][choice["chosen"]] == pytest.approx(min(choice["ms"].values()), rel=0.05)
    ensure_lut("host", space)  # second use: read, nothing measured
    assert "measuring" not in capsys.readouterr().out
    # `make lut DEVICE=host` refines the fast entries (more samples each), in the same per-machine file
    assert bench_main(["lut", "--device", "host", "--space", TINY, "--no-shipped-archs", "--rounds", "2",
                       "--per-visit", "4"]) == 0
    refined = capsys.readouterr().out
    assert "5 measured by this run" in refined and "chosen when it was first measured" in refined  # choice kept
    assert load_lut("host", space).header["kernels_choice"] == choice
    assert all(e["n"] == 8 for k, e in load_lut("host", space).entries.items() if k in timed)
