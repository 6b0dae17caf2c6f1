"""Android backend: parts converted here, pushed with adb, timed on the phone by TFLite's `benchmark_model`.

Each pass runs every op once (`--num_runs` timed runs after `--warmup_runs`), ops in a shuffled order, optionally
pinned to cores with `taskset`; the entry keeps the median over passes of benchmark_model's average. Several
phones (or emulators: just another serial) run in parallel, one thread each.
"""

from __future__ import annotations

import random
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.latency import LUT
from posekit.errors import UserError

from .parts import Part

REMOTE_DIR = "/data/local/tmp/posenas"
_NUM = r"([-+0-9.eE]+)"


# ---- benchmark_model output ------------------------------------------------------------------------------
def parse_benchmark_output(text: str) -> dict:
    """Parse TFLite benchmark_model's stdout/stderr (with or without 'INFO: ' prefixes).

    Returns {'avg_us', 'std_us', 'count', 'min_us', 'max_us', 'median_us'?, 'init_us', 'first_us',
    'warmup_avg_us', 'inference_avg_us', 'ops': [{'type', 'avg_ms', 'pct', 'name'}], 'op_types': {type: avg_ms}}.
    The timed runs are the last `count=` line with `avg=`; no such line -> UserError quoting the tail of the output.
    """
    lines = [re.sub(r"^(INFO|I tflite\s*|I)\s*:\s*", "", ln.strip()) for ln in text.splitlines()]
    out: dict = {}
    stats = [ln for ln in lines if ln.startswith("count=") and " avg=" in ln]
    if not stats:
        tail = " | ".join(ln for ln in lines if ln)[-300:]
        raise UserError(f"benchmark_model printed no timing line (count=... avg=...): {tail}")
    kv = dict(re.findall(r"(\w+)=" + _NUM, stats[-1]))
    out.update(count=int(float(kv["count"])), avg_us=float(kv["avg"]), std_us=float(kv.get("std", "nan")),
               min_us=float(kv.get("min", "nan")), max_us=float(kv.get("max", "nan")))
    if "median" in kv:
        out["median_us"] = float(kv["median"])
    for ln in lines:
        m = re.search(r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM +
                      r", Warmup \(avg\): " + _NUM + r", Inference \(avg\): " + _NUM, ln)
        if m:
            out.update(init_us=float(m[1]), first_us=float(m[2]), warmup_avg_us=float(m[3]),
                       inference_avg_us=float(m[4]))
    out["ops"], out["op_types"] = _op_profile(lines)
    return out


def _op_profile(lines: list[str]) -> tuple[list[dict], dict]:
    """The 'Operator-wise Profiling Info for Regular Benchmark Runs' run-order table and its by-type summary.

    Columns are read off each table's header line, as the tool's versions differ: TensorFlow's StatsCalculator
    prints `[node type] [start] [first] [avg ms] [%] [cdf%] [mem KB] [times called] [Name]` tab-separated, the
    newer one (tsl / LiteRT) drops `[start]`, and LiteRT's own summarizer pads with spaces instead of tabs."""
    ops, types = [], {}
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Operator-wise Profiling Info for Regular"))
    except StopIteration:
        return ops, types
    section, cols = None, None
    for ln in lines[start + 1:]:
        if ln.startswith("===="):
            section, cols = ln.strip("= ").lower(), None
            continue
        if ln.startswith("Timings (microseconds)") and section == "summary by node type":
            break
        if "[node type]" in ln.lower():
            cols = [c.lower() for c in re.findall(r"\[([^\]]+)\]", ln)]
            continue
        cells = [c.strip() for c in (ln.split("\t") if "\t" in ln else ln.split()) if c.strip()]
        if not cols or len(cells) < len(cols) - (cols[-1] == "name"):
            continue
        if cols[-1] == "name" and len(cells) > len(cols):  # a name with spaces, split by whitespace
            cells = cells[:len(cols) - 1] + [" ".join(cells[len(cols) - 1:])]
        row = dict(zip(cols, cells))
        try:
            if section == "run order":
                ops.append({"type": row["node type"], "avg_ms": float(row["avg ms"]),
                            "pct": float(row["%"].rstrip("%")), "name": row.get("name", "")})
            elif section == "summary by node type":
                types[row["node type"]] = float(row["avg ms"])
        except (KeyError, ValueError):
            continue
    return ops, types


# ---- adb ---------------------------------------------------------------------------------------------------
def _last_line(r: subprocess.CompletedProcess, default: str) -> str:
    """The last line adb printed (its error), stderr first."""
    lines = (r.stderr or r.stdout).strip().splitlines()
    return lines[-1] if lines else default


class Adb:
    """A thin wrapper over the `adb` binary for one device serial."""

    def __init__(self, serial: str, adb: str = "adb"):
        self.serial, self.adb = serial, adb

    def _run(self, *args: str, timeout: float = 600) -> str:
        cmd = [self.adb, "-s", self.serial, *args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"adb -s {self.serial} {args[0]}: timed out after {timeout:.0f} s") from None
        if r.returncode != 0:
            raise UserError(f"adb -s {self.serial} {' '.join(args)[:80]}: {_last_line(r, 'failed')}")
        return r.stdout + r.stderr

    def shell(self, cmd: str, timeout: float = 600) -> str:
        return self._run("shell", cmd, timeout=timeout)

    def push(self, local: str | Path, remote: str) -> None:
        self._run("push", str(local), remote)


def find_adb(adb: str | None = None) -> str:
    path = shutil.which(adb or "adb")
    if not path:
        raise UserError(f"no adb binary ('{adb or 'adb'}' is not on PATH): install Android platform-tools or pass "
                        f"--adb /path/to/adb; without a phone use the predicted profiles (--device pixel|note10 "
                        f"with `python -m device_bench predict`)")
    return path


def attached(adb: str) -> list[str]:
    """Serials of the devices `adb devices` lists as ready ('device' state)."""
    try:
        r = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=60)
    except (subprocess.TimeoutExpired, OSError) as e:
        raise UserError(f"{adb} devices: {e}") from None
    if r.returncode != 0:
        raise UserError(f"{adb} devices failed (exit {r.returncode}): {_last_line(r, 'no output')}")
    serials = []
    for ln in r.stdout.splitlines()[1:]:
        parts = ln.split()
        if len(parts) >= 2 and parts[1] == "device":
            serials.append(parts[0])
    return serials


def resolve_serials(adb: str, wanted: list[str | None]) -> list[str]:
    """Check each wanted serial is attached; None means 'the one attached device'."""
    have = attached(adb)
    if not have:
        raise UserError("adb lists no attached device: connect a phone with USB debugging on (or start an "
                        "emulator) and check `adb devices`")
    out = []
    for s in wanted:
        if s is None:
            if len(have) > 1:
                raise UserError(f"several devices attached ({', '.join(have)}): pick one with --serial")
            s = have[0]
        elif s not in have:
            raise UserError(f"device '{s}' is not attached (adb devices: {', '.join(have)})")
        out.append(s)
    return out


def benchmark_cmd(remote_model: str, threads: int, runs: int, warmup: int, xnnpack: bool = True,
                  taskset: str | None = None, profile: bool = False) -> str:
    cmd = [f"{REMOTE_DIR}/benchmark_model", f"--graph={remote_model}", f"--num_threads={threads}",
           f"--num_runs={runs}", f"--warmup_runs={warmup}", f"--use_xnnpack={'true' if xnnpack else 'false'}"]
    if profile:
        cmd.append("--enable_op_profiling=true")
    if taskset:
        cmd = ["taskset", taskset, *cmd]
    return " ".join(shlex.quote(c) for c in cmd)


def setup_device(dev: Adb, benchmark_model: str | Path) -> None:
    bm = Path(benchmark_model)
    if not bm.is_file():
        raise UserError(f"{bm}: no benchmark_model binary here (TFLite's android benchmark_model, e.g. the "
                        f"nightly android_aarch64_benchmark_model); pass it with --benchmark-model")
    dev.shell(f"mkdir -p {REMOTE_DIR}")
    dev.push(bm, f"{REMOTE_DIR}/benchmark_model")
    dev.shell(f"chmod 755 {REMOTE_DIR}/benchmark_model")


def device_fingerprint(dev: Adb, benchmark_model: str | Path, taskset: str | None) -> dict:
    """What an Android LUT describes: phone model, SoC / board, Android version, the benchmark_model binary (name
    and sha256: nightlies differ), the taskset mask and CPU0's frequency governor."""
    from posekit.io import sha256_file

    def prop(name: str) -> str | None:
        return dev.shell(f"getprop {name}").strip() or None

    governor = dev.shell("cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null").strip()
    bm = Path(benchmark_model)
    return {"kind": "android", "model": prop("ro.product.model"), "manufacturer": prop("ro.product.manufacturer"),
            "soc": prop("ro.soc.model") or prop("ro.board.platform") or prop("ro.hardware"),
            "board": prop("ro.product.board"), "android": prop("ro.build.version.release"),
            "benchmark_model": f"{bm.name} sha256 {sha256_file(bm)[:16]}", "taskset": taskset,
            "governor": governor or None, "serial": dev.serial}


def measure(lut: LUT, parts: dict[str, Part], models: dict[str, Path], dev: Adb, threads: int, runs: int = 30,
            warmup: int = 5, passes: int = 3, xnnpack: bool = True, taskset: str | None = None,
            chunk: int = 12, position: int = 0) -> list[str]:
    """Time every key of `models` (key -> local .tflite) the LUT lacks on one device; saves after each chunk."""
    for k, p in parts.items():
        if p.is_identity and k not in lut.entries:  # the identity runs no op
            lut.entries[k] = {"median_ms": 0.0, "mean_ms": 0.0, "std_ms": 0.0, "n": 0}
    todo = [k for k in models if k not in lut.entries]
    rng = random.Random(0)
    bar = tqdm(total=len(todo) * passes, desc=f"lut {lut.device} ({dev.serial})", unit="run", position=position)
    for i in range(0, len(todo), chunk):
        keys = todo[i:i + chunk]
        remote = {k: f"{REMOTE_DIR}/{models[k].name}" for k in keys}
        for k in keys:
            dev.push(models[k], remote[k])
        avgs: dict[str, list[float]] = {k: [] for k in keys}
        stds: dict[str, list[float]] = {k: [] for k in keys}
        for _ in range(passes):
            rng.shuffle(keys)
            for k in keys:
                r = parse_benchmark_output(dev.shell(benchmark_cmd(remote[k], threads, runs, warmup, xnnpack,
                                                                   taskset)))
                avgs[k].append(r["avg_us"] / 1e3)
                stds[k].append(r["std_us"] / 1e3)
                bar.update()
        for k in keys:
            a = np.array(avgs[k])
            lut.entries[k] = {"median_ms": round(float(np.median(a)), 5), "mean_ms": round(float(a.mean()), 5),
                              "std_ms": round(float(np.sqrt(np.mean(np.square(stds[k])) + a.var())), 5),
                              "n": passes * runs}
        lut.save()
    bar.close()
    lut.save()
    return todo


def measure_many(jobs: list[tuple[LUT, Adb]], parts, models, **kw) -> dict[str, list[str]]:
    """Several devices in parallel (one thread per device; the work is on the phones)."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as ex:
        futs = {dev.serial: ex.submit(measure, lut, parts, models, dev, position=i, **kw)
                for i, (lut, dev) in enumerate(jobs)}
        return {s: f.result() for s, f in futs.items()}
