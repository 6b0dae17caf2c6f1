"""Android backend: the benchmark_model output parser on the tool's real output format, and the adb command flow
against a scripted FAKE adb (a stand-in for a phone, which this machine does not have)."""

import json
import stat
import sys
from pathlib import Path

import pytest

from device_bench import android
from device_bench.cli import main
from device_bench.parts import Part
from model.latency import LUT
from posekit.errors import UserError

DATA = Path(__file__).parent / "data" / "device_bench"


def test_parse_benchmark_output_xnnpack_run():
    r = android.parse_benchmark_output((DATA / "benchmark_model_output.txt").read_text())
    # the timed runs (second count= line), not the warm-up ones
    assert r["count"] == 279 and r["avg_us"] == pytest.approx(3581.77) and r["std_us"] == 98
    assert r["median_us"] == 3563 and r["min_us"] == 3484
    assert r["init_us"] == 41207 and r["inference_avg_us"] == pytest.approx(3581.77)
    assert r["ops"] == [] and r["op_types"] == {}


def test_parse_benchmark_output_op_profiling():
    r = android.parse_benchmark_output((DATA / "benchmark_model_op_profiling.txt").read_text())
    assert r["count"] == 274 and r["avg_us"] == pytest.approx(3645.12) and "median_us" not in r
    assert [o["type"] for o in r["ops"]] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "ADD"]
    assert r["ops"][1]["avg_ms"] == pytest.approx(1.289) and r["ops"][1]["pct"] == pytest.approx(35.447)
    assert r["ops"][3]["name"] == "[posenas/add]:3"
    assert r["op_types"] == {"CONV_2D": 2.229, "DEPTHWISE_CONV_2D": 1.289, "ADD": 0.117}
    # the initialization profile (AllocateTensors) is not mistaken for an op
    assert all(o["type"] != "AllocateTensors" for o in r["ops"])


def test_parse_benchmark_output_failure_is_one_clear_error():
    with pytest.raises(UserError, match="no timing line"):
        android.parse_benchmark_output("ERROR: Could not open '/data/local/tmp/x.tflite'.\nAborted")


FAKE_ADB = r'''#!{python}
"""FAKE adb for tests: a scripted stand-in for the adb binary and one phone. `push` copies into a folder that plays
the phone's storage; `shell ... benchmark_model --graph=G ...` prints the recorded benchmark_model output with
avg= set to the pushed model's size in bytes (in us), so each model gets a distinct, checkable latency."""
import json, os, re, shutil, sys
root = os.environ["FAKE_ADB_ROOT"]
args = sys.argv[1:]
with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\n")
if args == ["devices"]:
    print("List of devices attached\nFAKE0001\tdevice\nFAKE0002\toffline\n")
    sys.exit(0)
assert args[0] == "-s"
serial, cmd = args[1], args[2:]
phone = os.path.join(root, serial)
os.makedirs(phone, exist_ok=True)
if cmd[0] == "push":
    shutil.copy(cmd[1], os.path.join(phone, os.path.basename(cmd[2])))
elif cmd[0] == "shell":
    line = cmd[1]
    if "getprop ro.product.model" in line:
        print("Fake Phone 1")
    elif "benchmark_model" in line and "--graph=" in line:
        graph = re.search(r"--graph=(\S+)", line)[1]
        size = os.path.getsize(os.path.join(phone, os.path.basename(graph)))
        text = open(os.environ["FAKE_ADB_SAMPLE"]).read()
        print(re.sub(r"(count=279 .* avg=)[0-9.]+", lambda m: m[1] + str(size), text))
'''


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    exe = tmp_path / "fake_adb"
    exe.write_text(FAKE_ADB.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_ADB_ROOT", str(tmp_path))
    monkeypatch.setenv("FAKE_ADB_SAMPLE", str(DATA / "benchmark_model_output.txt"))
    return exe


def calls(tmp_path):
    return [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_fake_adb_flow_measures_and_resumes(tmp_path, fake_adb):
    adb = android.find_adb(str(fake_adb))
    assert android.resolve_serials(adb, [None]) == ["FAKE0001"]  # the offline one is not offered
    with pytest.raises(UserError, match="not attached"):
        android.resolve_serials(adb, ["FAKE0002"])
    bm = tmp_path / "benchmark_model"
    bm.write_bytes(b"\x7fELF fake benchmark_model")
    dev = android.Adb("FAKE0001", adb)
    android.setup_device(dev, bm)
    # models: distinct sizes stand in for distinct ops (the fake phone reports size-in-bytes us)
    models, parts = {}, {}
    for i, n in enumerate((1500, 2500, 4000)):
        key = f"ir_k3_e3|in=8x8x{8 * (i + 1)}|out=8|s=1"
        models[key] = tmp_path / f"m{i}.tflite"
        models[key].write_bytes(b"x" * n)
        parts[key] = Part(key, "block", (8, 8, 8 * (i + 1)), op="ir_k3_e3", out=8)
    parts["skip|in=8x8x8|out=8|s=1"] = Part("skip|in=8x8x8|out=8|s=1", "block", (8, 8, 8), op="skip", out=8)
    fp = android.device_fingerprint(dev, bm, "f0")
    assert fp["model"] == "Fake Phone 1" and fp["taskset"] == "f0"
    assert fp["benchmark_model"].startswith("benchmark_model sha256")
    lut = LUT({"device": "FAKE0001", "backend": "android-adb", "runtime": "x", "runtime_version": None,
               "threads": 2, "precision": "fp32", "kernels": "xnnpack", "date": "2026-01-01", "search_space": "t",
               "search_space_sha256": None, "provenance": "measured", "fingerprint": fp}, {},
              tmp_path / "luts" / "FAKE0001.json")
    done = android.measure(lut, parts, models, dev, threads=2, runs=20, warmup=3, passes=2, taskset="f0", chunk=2)
    assert sorted(done) == sorted(models)
    saved = json.loads(lut.path.read_text())["entries"]
    for key, path in models.items():
        assert saved[key]["median_ms"] == pytest.approx(path.stat().st_size / 1e3)
        assert saved[key]["n"] == 2 * 20
    assert saved["skip|in=8x8x8|out=8|s=1"]["median_ms"] == 0
    shells = [c[3] for c in calls(tmp_path) if len(c) > 3 and c[2] == "shell" and "--graph=" in c[3]]
    assert len(shells) == 3 * 2  # every op in every pass
    assert all(s.startswith("taskset f0 ") and "--num_threads=2" in s and "--num_runs=20" in s
               and "--warmup_runs=3" in s and "--use_xnnpack=true" in s for s in shells)
    assert ["-s", "FAKE0001", "push", str(bm), f"{android.REMOTE_DIR}/benchmark_model"] in calls(tmp_path)
    # second run: nothing left to measure, no benchmark_model call
    n_before = len(calls(tmp_path))
    assert android.measure(lut, parts, models, dev, threads=2, runs=20, warmup=3, passes=2) == []
    assert not any("--graph=" in " ".join(c) for c in calls(tmp_path)[n_before:])


def test_android_cli_errors(tmp_path, fake_adb, monkeypatch, capsys):
    # no adb anywhere: one line saying what is missing
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["lut", "--device", "pixel", "--quick", "--out", str(tmp_path / "p.json")]) == 2
    assert "no adb binary" in capsys.readouterr().err
    # adb present but no benchmark_model given
    assert main(["lut", "--device", "pixel", "--quick", "--adb", str(fake_adb),
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "benchmark_model" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_benchmark_cmd_quotes_and_flags():
    cmd = android.benchmark_cmd("/data/local/tmp/posenas/a b.tflite", 4, 50, 10, xnnpack=False, profile=True)
    assert "'--graph=/data/local/tmp/posenas/a b.tflite'" in cmd and "--use_xnnpack=false" in cmd
    assert "--enable_op_profiling=true" in cmd and not cmd.startswith("taskset")


@pytest.mark.skipif(sys.platform == "darwin", reason="the clear error is for systems without Core ML")
def test_coreml_backend_raises_its_clear_error_off_macos(capsys):
    assert main(["lut", "--device", "coreml", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "only on macOS" in err and err.count("\n") == 1



# The profile table as printed by the tool versions without a [start] column (tsl's StatsCalculator, LiteRT's own
# summarizer pads with spaces, not tabs): the parser reads the columns off each header line.
NO_START_PROFILE = """INFO: count=50 first=2101 curr=2050 min=2011 max=2230 avg=2062.5 std=31
INFO: Inference timings in us: Init: 15000, First inference: 2101, Warmup (avg): 2080, Inference (avg): 2062.5
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
                   [node type]    [first]   [avg ms]        [%]     [cdf%]   [mem KB] [times called]     [Name]
                       CONV_2D      1.101      1.050    51.220%    51.220%      0.000          1 [stem/conv]:0
             DEPTHWISE_CONV_2D      0.802      0.800    39.024%    90.244%      0.000          1 [block 1/dw]:1
                           ADD      0.201      0.200     9.756%   100.000%      0.000          1 [block 1/add]:2

============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t                 CONV_2D\t        1\t     1.050\t    51.220%\t    51.220%\t     0.000\t             1
\t       DEPTHWISE_CONV_2D\t        1\t     0.800\t    39.024%\t    90.244%\t     0.000\t             1
\t                     ADD\t        1\t     0.200\t     9.756%\t   100.000%\t     0.000\t             1

Timings (microseconds): count=50 first=2104 curr=2051 min=2012 max=2231 avg=2063 std=31
"""


def test_parse_benchmark_output_profile_without_start_column():
    r = android.parse_benchmark_output(NO_START_PROFILE)
    assert r["count"] == 50 and r["avg_us"] == pytest.approx(2062.5)
    assert [(o["type"], o["avg_ms"], o["pct"]) for o in r["ops"]] == [
        ("CONV_2D", 1.05, 51.22), ("DEPTHWISE_CONV_2D", 0.8, 39.024), ("ADD", 0.2, 9.756)]
    assert r["ops"][1]["name"] == "[block 1/dw]:1"  # a name with a space survives the space-padded layout
    assert r["op_types"] == {"CONV_2D": 1.05, "DEPTHWISE_CONV_2D": 0.8, "ADD": 0.2}


@pytest.fixture
def real_adb(monkeypatch):
    """Debian's adb (apt-get install adb): the real binary and its server, on a private port, no phone attached."""
    import shutil
    import subprocess

    adb = shutil.which("adb")
    if adb is None:
        pytest.skip("no adb binary on PATH (apt-get install adb)")
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", "5397")
    yield adb
    subprocess.run([adb, "kill-server"], capture_output=True, timeout=30)  # the server it started dies with the test


def test_real_adb_without_a_phone_gives_one_clear_error(real_adb, tmp_path, capsys):
    bm = tmp_path / "benchmark_model"
    bm.write_bytes(b"\x7fELF")
    assert android.attached(real_adb) == []
    assert main(["lut", "--device", "pixel", "--quick", "--adb", real_adb, "--benchmark-model", str(bm),
                 "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: adb lists no attached device") and not (tmp_path / "p.json"
                                                                                              ).exists()
    assert main(["bench", "--device", "SERIAL0", "--model", str(bm.with_suffix(".tflite")), "--adb", real_adb,
                 "--benchmark-model", str(bm)]) == 2
    assert "no attached device" in capsys.readouterr().err
    # a command to a serial that is not there: adb's own message, in one line
    with pytest.raises(UserError, match="not found"):
        android.Adb("SERIAL0", real_adb).shell("echo hi", timeout=30)
