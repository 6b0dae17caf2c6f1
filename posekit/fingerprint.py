"""Device fingerprints: what a measured LUT describes, so a LUT from another CPU or runtime is never taken for this one.

A host fingerprint holds what changes which kernels run and how fast: CPU vendor, family/model/stepping and model
name, the ISA features the runtime dispatches on (x86: AVX2, AVX-512F, AVX-512 VNNI / AVX-VNNI, AMX; ARM: NEON
dot-product, i8mm, SVE), logical cores, the clock (max frequency where the kernel exposes it), and the runtime and its
version; a measured LUT adds its setup (kernels: XNNPACK or builtin, threads, timing clock). `MATCH_FIELDS` are the
ones compared (consumers time with the LUT's own setup): the clock is recorded but not compared (a VM reports whatever
the host runs at this second), and the core count only matters to multi-threaded LUTs (`differences(threads=...)`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

# /proc/cpuinfo flag names (x86 "flags", ARM "Features") that select different XNNPACK / TFLite kernels.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16")
MATCH_FIELDS = ("kind", "cpu_vendor", "cpu_family", "cpu_model", "cpu_stepping", "cpu_name", "isa", "runtime",
                "runtime_version")
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields (x86), plus the top-level ones ARM prints once ("Hardware", ...)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        k, v = (s.strip() for s in line.split(":", 1))
        info.setdefault(k, v)
    return info


def _max_mhz() -> int | None:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) // 1000
    except (OSError, ValueError):
        return None


def host_fingerprint(runtime: str = "ai-edge-litert", cpuinfo: str | None = None) -> dict:
    """This machine's fingerprint (`cpuinfo` text may be given, e.g. in tests)."""
    from importlib.metadata import PackageNotFoundError, version

    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            cpuinfo = ""
    info = _cpuinfo(cpuinfo)
    flags = set((info.get("flags") or info.get("Features") or "").split())
    try:
        rt_version = version(runtime)
    except PackageNotFoundError:
        rt_version = None
    mhz = _max_mhz()
    if mhz is None and info.get("cpu MHz"):
        mhz = round(float(info["cpu MHz"]))
    return {
        "kind": "host",
        "cpu_vendor": info.get("vendor_id") or info.get("CPU implementer") or platform.machine(),
        "cpu_family": info.get("cpu family") or info.get("CPU architecture"),
        "cpu_model": info.get("model") or info.get("CPU part"),
        "cpu_stepping": info.get("stepping") or info.get("CPU revision"),
        "cpu_name": info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine(),
        "isa": sorted(f for f in ISA_FLAGS if f in flags),
        "logical_cores": os.cpu_count(),
        "clock_mhz": mhz,
        "runtime": runtime,
        "runtime_version": rt_version,
    }


def fingerprint_id(fp: dict) -> str:
    """Short id of the compared fields: names the per-machine LUT file (luts/host/<device>-<id>.json)."""
    key = {k: fp.get(k) for k in MATCH_FIELDS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def differences(lut_fp: dict | None, here: dict, threads: int | None = 1) -> list[str]:
    """The compared fields where the LUT's fingerprint and this machine's differ ('field: lut != here')."""
    if not isinstance(lut_fp, dict):
        return ["fingerprint: none recorded"]
    fields = MATCH_FIELDS + (("logical_cores",) if (threads or 1) > 1 else ())
    return [f"{f}: {lut_fp.get(f)!r} != {here.get(f)!r}" for f in fields if lut_fp.get(f) != here.get(f)]


def describe(fp: dict | None) -> str:
    """One short phrase: 'AuthenticAMD AMD EPYC (family 25 model 1) avx2+fma, 2 cores, ai-edge-litert 2.3.0'."""
    if not isinstance(fp, dict):
        return "an unknown machine (no fingerprint in the header)"
    if fp.get("kind") == "android":
        return (f"{fp.get('model')} ({fp.get('soc')}, Android {fp.get('android')}, {fp.get('benchmark_model')}, "
                f"taskset {fp.get('taskset')}, governor {fp.get('governor')})")
    isa = "+".join(fp.get("isa") or []) or "no SIMD flags"
    return (f"{fp.get('cpu_name')} ({fp.get('cpu_vendor')} family {fp.get('cpu_family')} model {fp.get('cpu_model')} "
            f"stepping {fp.get('cpu_stepping')}) {isa}, {fp.get('logical_cores')} cores, "
            f"{fp.get('runtime')} {fp.get('runtime_version')} [{fingerprint_id(fp)}]")
