"""Writing LUT files: the header that says what was measured (or predicted) and how, resume, and the checks that
keep a re-run from mixing two setups in one file. Reading and key checks live in `model.latency` (the contract)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path

from model.latency import LUT, LUT_DIR, stat_field
from model.space import SearchSpace
from posekit.errors import UserError
from posekit.fingerprint import fingerprint_id, host_fingerprint

from .timing import summary

# Header fields that must agree before a run may add entries to an existing file.
# The search space is not one: entries are keyed by shape, so one table can gather the keys of several spaces
# (header["search_spaces"] lists them).
SETUP_FIELDS = ("device", "backend", "runtime", "runtime_version", "threads", "precision", "kernels", "clock",
                "fingerprint_id")
DEFAULTS = {"clock": "wall"}


def host_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def make_header(device: str, space: SearchSpace, *, backend: str, runtime: str, runtime_version: str | None,
                threads: int | None, precision: str, kernels: str, provenance: str, host: str | None = None,
                error=None, archs: list[str] = (), fingerprint: dict | None = None,
                also_spaces: list[SearchSpace] = (), **extra) -> dict:
    """A LUT header; a measured LUT carries the device `fingerprint` (the host's own when not given) and its id.
    `also_spaces`: further spaces whose keys the table holds (`search_spaces` lists them all, `space` first)."""
    if provenance == "measured" and fingerprint is None:
        fingerprint = host_fingerprint()
    h = {"device": device, "backend": backend, "runtime": runtime, "runtime_version": runtime_version,
         "threads": threads, "precision": precision, "kernels": kernels,
         "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
         "host": host if host is not None else host_description(), "search_space": space.name,
         "search_space_sha256": space.sha256, "provenance": provenance, "error": error, "calibration": None,
         "archs": list(archs)}
    if also_spaces:
        h["search_spaces"] = {s.name: s.sha256 for s in (space, *also_spaces)}
    if fingerprint is not None:
        h["fingerprint"], h["fingerprint_id"] = fingerprint, fingerprint_id(fingerprint)
    h.update(extra)
    return h


def lut_path(device: str, out: str | Path | None = None) -> Path:
    """--out, else where `load_lut(device)` reads it (host devices: this machine's per-fingerprint file)."""
    from model.latency import HOST_DEVICES, host_lut_path

    if out:
        return Path(out)
    return host_lut_path(device) if device in HOST_DEVICES else LUT_DIR / f"{device}.json"


def open_for_update(path: Path, header: dict, fresh: bool = False, replace_foreign: bool = False) -> LUT:
    """The LUT to add entries to: the file's entries if it was measured with the same setup, else a new table.

    A different setup (threads, precision, kernels, runtime version, search space) is an error naming the field,
    unless `fresh` (then the old file is replaced when the first entries are saved). A predicted profile is replaced
    by measurements without asking: measuring is what it stands in for; so is, with `replace_foreign` (the
    per-machine default path), a file whose fingerprint is not this machine's.
    """
    if fresh or not path.exists():
        return LUT(header, {}, path)
    try:
        d = json.loads(path.read_text())
        old, entries = d["header"], d["entries"]
        assert isinstance(old, dict) and isinstance(entries, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise UserError(f"{path}: corrupt LUT file; pass --fresh to measure it again from scratch") from None
    if str(old.get("provenance", "")).startswith("predicted"):
        return LUT(header, {}, path)
    if stat_field(old) != stat_field(header):  # its entries lack the field this run's latencies are read from
        print(f"{path}: its entries hold another statistic than {stat_field(header)}; measuring them again")
        return LUT(header, {}, path)
    if isinstance(old.get("fingerprint"), dict):  # the id of what the header says, not a stored id that may be stale
        old = {**old, "fingerprint_id": fingerprint_id(old["fingerprint"])}
    if replace_foreign and old.get("fingerprint_id") != header.get("fingerprint_id"):
        print(f"{path}: measured on another machine ({old.get('fingerprint_id')}); replacing it with this "
              f"machine's measurements")
        return LUT(header, {}, path)
    for f in SETUP_FIELDS:
        was, now = old.get(f, DEFAULTS.get(f)), header.get(f, DEFAULTS.get(f))
        if was != now:
            raise UserError(f"{path}: measured with {f}={was!r}, this run has {f}={now!r}; "
                            f"pass --fresh to replace it or --out to write another file")
    keep = {k: v for k, v in header.items() if k not in ("date",)}
    merged = {**old, **keep, "calibration": old.get("calibration"), "date": header["date"]}
    merged["archs"] = sorted(set(old.get("archs") or []) | set(header.get("archs") or []))
    spaces = {**_spaces(old), **_spaces(header)}  # the spaces this table now holds the keys of
    if len(spaces) > 1:
        merged["search_spaces"] = spaces
    return LUT(merged, dict(entries), path)


def _spaces(h: dict) -> dict:
    s = h.get("search_spaces")
    return dict(s) if isinstance(s, dict) else {h.get("search_space"): h.get("search_space_sha256")}


def entry(samples_ms, n_override: int | None = None) -> dict:
    import numpy as np

    a = np.asarray(samples_ms, dtype=float)
    if a.size == 0 or not np.isfinite(a).all():
        raise UserError(f"no finite timing samples ({a.size} given): nothing to write")
    s = summary(a)  # the figures `bench` prints, computed in one place
    return {**{k: round(s[k], 5) for k in ("median_ms", "min_ms", "mean_ms", "std_ms")},
            "n": int(n_override if n_override is not None else a.size)}
