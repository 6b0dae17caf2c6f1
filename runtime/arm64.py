"""A .tflite run by the phone's own CPU kernels: LiteRT's aarch64 build, in an aarch64 python 3.11, under user-mode
QEMU emulating a named ARM CPU profile (`make setup-arm` installs all three into .arm64/, see
runtime/setup_arm64.sh). LiteRT picks its kernels at run time from the CPU's features (NEON, dot product, i8mm,
SVE/SME), so each profile runs the code a phone with that CPU would.

`run` returns each profile's raw outputs (integers for int8 I/O, so parity compares integer for integer) and what the
runtime saw (QEMU version, -cpu, the CPU features the emulated /proc/cpuinfo and HWCAPs show, LiteRT version, the
kernels LiteRT reported). A profile that dies (SIGILL, SIGSEGV, a timeout) gives a failed result naming the signal
and profile; the others still run. `compare` says whether two runs agree, and where not.

Emulation is 100-1000x slower than the phone and not proportional to it: `emulated_s` is bookkeeping (what the check
costs), never a latency.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posekit.errors import UserError
from posekit.proc import die_with_parent

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / ".arm64"
WORKER = Path(__file__).resolve().parent / "arm64_worker.py"
SIGNATURE = "serving_default"

# name -> (QEMU -cpu, what a phone with it has). Named for the phone's ISA level, not QEMU's model names.
PROFILES = {
    "armv8.0": ("cortex-a53", "NEON only (Cortex-A53 class)"),
    "armv8.2-dotprod": ("cortex-a76", "NEON, dot product, fp16 arithmetic (Cortex-A76 class)"),
    "armv8.6-i8mm": ("max,sve=off,sme=off", "dot product, i8mm, bf16; no SVE/SME"),
    "armv9-sme": ("max", "SVE2 and SME (the newest cores)"),
}
KERNELS = ("xnnpack", "builtin")

# LiteRT's CPU detection (cpuinfo) walks the host's /sys/devices/system/cpu/cpu*/cache, which describes x86 caches
# and has crashed it (SIGSEGV at 0x8); hide those folders in a private mount namespace. /proc/cpuinfo needs no
# binding: QEMU >= 8 answers the guest's reads of it with the emulated CPU's own (the features recorded below).
_ISOLATE = ('for d in /sys/devices/system/cpu/cpu*/cache; do [ -d "$d" ] && '
            'mount -t tmpfs -o ro,size=4k arm64-none "$d"; done; exec "$@"')


@dataclass(frozen=True)
class Setup:
    root: Path
    qemu: Path
    sysroot: Path
    site: Path
    qemu_version: str


def setup(root: str | Path | None = None) -> Setup:
    """The installed runtime, or a UserError naming `make setup-arm`."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    s = Setup(root, root / "bin" / "qemu-aarch64", root / "sysroot", root / "site", "")
    python = s.sysroot / "usr" / "bin" / "python3.11"
    missing = [p for p in (s.qemu, python, s.site / "ai_edge_litert") if not p.exists()]
    if missing or not (root / ".stamp").is_file():
        raise UserError(f"{root}: the arm64 runtime is not installed ({missing[0] if missing else '.stamp'} "
                        f"missing): run `make setup-arm`")
    if shutil.which("unshare") is None:
        raise UserError("unshare (util-linux) is required to run the arm64 runtime: apt-get install util-linux")
    out = subprocess.run([str(s.qemu), "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version (\S+)", out)
    return Setup(s.root, s.qemu, s.sysroot, s.site, m.group(1) if m else "unknown")


@dataclass
class ArmRun:
    """One profile's run of one model over the inputs."""
    profile: str
    cpu: str  # QEMU's -cpu
    ok: bool
    outputs: list[dict[str, np.ndarray]] = field(default_factory=list)  # per input: {output name: raw array}
    error: str | None = None  # why not ok: the signal or timeout, with the profile named
    seen: dict = field(default_factory=dict)  # qemu, litert, features, hwcap(2), kernels, litert_log
    emulated_s: float = 0.0  # wall time under emulation: what the check costs, NOT a latency


def _isolation() -> list[str]:
    # as root a private mount namespace is enough; a normal user maps itself to root in a new user namespace
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-m", "-r"]


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def run(model: str | Path, inputs: Sequence[np.ndarray], profiles: Sequence[str] = ("armv8.0",),
        kernels: str = "xnnpack", threads: int = 1, root: str | Path | None = None,
        timeout: float = 600) -> list[ArmRun]:
    """Run `model`'s serving signature on every array of `inputs` (each already in the input's dtype and layout:
    see `model_inputs`), once per profile, in profile order. Never raises for a profile that dies: its ArmRun says
    why. Raises UserError for a missing runtime, an unknown profile or kernel set, or an unreadable model."""
    return [runs[0] for runs in run_models([(model, inputs)], profiles, kernels, threads, root, timeout)]


def run_models(jobs: Sequence[tuple[str | Path, Sequence[np.ndarray]]], profiles: Sequence[str] = ("armv8.0",),
               kernels: str = "xnnpack", threads: int = 1, root: str | Path | None = None,
               timeout: float = 600) -> list[list[ArmRun]]:
    """`run` for several (model, inputs) jobs with one emulator start per profile (starting python, numpy and
    LiteRT under emulation is most of a run's time): result[profile index][job index]. A profile that dies fails
    every job of that profile."""
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise UserError(f"arm64 profile {unknown[0]!r}: unknown (known: {', '.join(PROFILES)})")
    if kernels not in KERNELS:
        raise UserError(f"arm64 kernels {kernels!r}: unknown (known: {', '.join(KERNELS)})")
    models = [Path(m).resolve() for m, _ in jobs]
    for m in models:
        if not m.is_file():
            raise UserError(f"{m}: no such .tflite")
    s = setup(root)
    results = []
    with tempfile.TemporaryDirectory(prefix="posenas-arm64-") as tmp:
        for j, (_, inputs) in enumerate(jobs):
            np.savez(Path(tmp) / f"inputs-{j}.npz", **{str(i): np.asarray(x) for i, x in enumerate(inputs)})
        for name in profiles:
            results.append(_run_profile(s, name, models, [len(x) for _, x in jobs], Path(tmp), kernels, threads,
                                        timeout))
    return results


def _run_profile(s: Setup, name: str, models: list[Path], counts: list[int], io_dir: Path, kernels: str,
                 threads: int, timeout: float) -> list[ArmRun]:
    cpu = PROFILES[name][0]
    for f in [*io_dir.glob("outputs-*.npz"), io_dir / "seen.json"]:
        f.unlink(missing_ok=True)
    cmd = [*_isolation(), "--", "sh", "-c", _ISOLATE, "sh",
           str(s.qemu), "-cpu", cpu, "-L", str(s.sysroot), str(s.sysroot / "usr/bin/python3.11"),
           str(WORKER), str(io_dir), kernels, str(threads), *map(str, models)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(s.site), "PYTHONNOUSERSITE": "1",
           "LC_ALL": "C"}
    seen = {"qemu": s.qemu_version, "cpu": cpu, "kernels_asked": kernels}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", preexec_fn=die_with_parent)
    try:
        log, _ = proc.communicate(timeout=timeout)
        error = None
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        error = f"arm64 profile {name} (-cpu {cpu}): timed out after {timeout:g} s"
    elapsed = (time.monotonic() - t0) / len(models)  # one emulator start shared by the jobs
    # LiteRT's own lines (e.g. "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") say which kernels ran
    seen["litert_log"] = sorted({ln.strip() for ln in (log or "").splitlines() if ln.startswith(("INFO:", "WARN"))})
    if error is None and proc.returncode != 0:
        why = f"killed by {_signal_name(proc.returncode)}" if proc.returncode < 0 else f"exit {proc.returncode}"
        last = next((ln.strip() for ln in reversed(log.splitlines()) if ln.strip()), "")
        error = f"arm64 profile {name} (-cpu {cpu}): {why}" + (f": {last[:300]}" if last else "")
    if error is not None:
        return [ArmRun(name, cpu, False, error=error, seen=seen, emulated_s=elapsed) for _ in models]
    seen.update(json.loads((io_dir / "seen.json").read_text()))
    delegates = seen.pop("delegate_nodes")
    runs = []
    for j, n in enumerate(counts):
        outputs: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        with np.load(io_dir / f"outputs-{j}.npz") as z:
            for key in z.files:
                i, out_name = key.split("/", 1)
                outputs[int(i)][out_name] = z[key]
        kern = "XNNPACK delegate" if delegates[j] else "builtin (no delegate)"
        runs.append(ArmRun(name, cpu, True, outputs=outputs, seen={**seen, "kernels": kern}, emulated_s=elapsed))
    return runs


def model_inputs(model: str | Path, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Float inputs (in the model's layout) as the model takes them: quantized like runtime.tflite.run does for an
    integer input, so host and arm64 get the very same integers."""
    from runtime import tflite

    (inp,) = tflite.io_details(model)["inputs"]
    q = inp["quantization"]
    if q is None or inp["dtype"] == "float32":
        return [np.asarray(x, np.float32) for x in xs]
    info = np.iinfo(inp["dtype"])
    return [np.clip(np.round(np.asarray(x, np.float32) / q["scale"]) + q["zero_point"], info.min, info.max)
            .astype(inp["dtype"]) for x in xs]


def host_outputs(model: str | Path, inputs: Sequence[np.ndarray], kernels: str = "xnnpack",
                 threads: int = 1) -> list[dict[str, np.ndarray]]:
    """The host (x86) LiteRT's raw outputs for the same inputs: what `run`'s outputs are compared with."""
    from runtime import tflite

    runner = tflite.interpreter(model, threads, kernels=kernels).get_signature_runner(SIGNATURE)
    (iname, _), = runner.get_input_details().items()
    return [{k: np.array(v) for k, v in runner(**{iname: np.asarray(x)}).items()} for x in inputs]


@dataclass(frozen=True)
class Agreement:
    """arm64 against host over every output element of every input. Integer outputs agree only when equal
    (differing: how many elements, max_steps: by how many quantization steps at most); float ones when the max
    |difference| is within `tol` of the host output's range (max_rel)."""
    ok: bool
    elements: int
    differing: int
    max_steps: int
    max_rel: float
    where: str  # the worst element: input, output, index, both values ("" when they agree)
    text: str


def compare(host: Sequence[dict[str, np.ndarray]], arm: Sequence[dict[str, np.ndarray]],
            tol: float = 1e-5) -> Agreement:
    """Compare per-input output dicts (host_outputs / ArmRun.outputs)."""
    if len(host) != len(arm):
        return Agreement(False, 0, 0, 0, float("nan"), "", f"{len(arm)} arm64 results for {len(host)} inputs")
    elements = differing = max_steps = 0
    max_rel, where, worst = 0.0, "", -1.0
    integer = False
    for i, (h_out, a_out) in enumerate(zip(host, arm)):
        if set(h_out) != set(a_out):
            return Agreement(False, elements, differing, max_steps, float("nan"), f"input {i}",
                             f"input {i}: outputs {sorted(a_out)} on arm64, {sorted(h_out)} on the host")
        for name in sorted(h_out):
            h, a = np.asarray(h_out[name]), np.asarray(a_out[name])
            if h.shape != a.shape or h.dtype != a.dtype:
                return Agreement(False, elements, differing, max_steps, float("nan"), f"input {i} {name}",
                                 f"input {i} {name}: arm64 {a.dtype}{list(a.shape)}, host {h.dtype}{list(h.shape)}")
            elements += h.size
            if np.issubdtype(h.dtype, np.integer):
                integer = True
                d = np.abs(a.astype(np.int64) - h.astype(np.int64))
                differing += int(np.count_nonzero(d))
                score = float(d.max()) if d.size else 0.0
                max_steps = max(max_steps, int(score))
            else:
                d = np.abs(a.astype(np.float64) - h.astype(np.float64))
                rng = float(np.ptp(h)) or 1.0
                differing += int(np.count_nonzero(d > tol * rng))  # tol 0: any difference counts
                score = float(d.max()) / rng if d.size else 0.0
                max_rel = max(max_rel, score)
            if score > worst and score > 0:
                worst = score
                idx = np.unravel_index(int(np.argmax(d)), d.shape)
                where = (f"input {i} {name}[{', '.join(map(str, idx))}]: host {h[idx].item():.7g}, "
                         f"arm64 {a[idx].item():.7g}")
    if integer:
        ok = differing == 0
        text = (f"all {elements} integers equal" if ok else
                f"{differing} of {elements} elements differ, by at most {max_steps} step"
                f"{'s' if max_steps > 1 else ''}; worst: {where}")
    else:
        ok = max_rel <= tol
        text = (f"all {elements} values equal" if differing == 0 and max_rel == 0 else
                f"max |diff| {max_rel:.2g} of range (tol {tol:g})" if ok else
                f"{differing} of {elements} elements differ, max |diff| {max_rel:.2g} of range > {tol:g}; worst: "
                f"{where}")
    return Agreement(ok, elements, differing, max_steps, max_rel, where if not ok else "", text)
