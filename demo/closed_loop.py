"""python -m demo closed-loop (make closed-loop): does a network searched on this host's int8 LUT run, converted, at
the latency it was searched for? Measure, search, convert, measure, each step a stage CLI (demo/pipeline.py's
step table: skipped when fresh, a killed run resumes), as the demo runs them; nothing here imports a stage.

  1. lut        luts/host/host-int8-<machine>.json, only when missing   python -m device_bench lut
  2. reference  EfficientPose-A's blocks with the space's stem and head (the part the search cannot change is then
                the same in both), random init, full-integer int8      python -m convert --arch ...
  3. time-ref   its whole-model latency on the LUT's runtime settings   python -m device_bench bench --model ...
                (threads, clock and kernel set: the LUT header's)
  4. search     target = ratio x the measured reference; a LUT without a fitted calibration is calibrated by that
                one point (--ref-ms)                                    python -m search --device ... --target-ms ...
  5. derived    the derived arch, int8 as step 2                        python -m convert --arch <search>/arch.yaml
  6. time-both  reference and derived in one interleaved run            python -m device_bench bench --model A B
Latency does not depend on the weight values, so both networks keep their initial weights (BN calibrated on real
crops by convert). Writes <out>/closed_loop.json; exit 1 when, in step 6's one interleaved run, the derived net's
latency is off ratio x the reference's by more than --tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from model.latency import HOST_DEVICES, lut_device, resolve_lut
from posekit.cli import (
    ArgumentParser,
    data_dir,
    nonneg_int,
    output_dir,
    positive_float,
    positive_int,
    seed_int,
)
from posekit.errors import UserError
from posekit.io import atomic_write_json, atomic_write_text
from posekit.paths import RUNS

from .pipeline import Step, run_steps

INT8 = ["--targets", "tflite-int8", "--int8-candidates", "static_wi8_ai8", "--calib", "8", "--jobs", "1"]


def closed_loop_lut(s: str) -> str:
    """--lut: a LUT that exists (lut_device), or a host device whose LUT this machine has yet to measure (step 1)."""
    return s if s in HOST_DEVICES else lut_device(s)


closed_loop_lut.bad = lut_device.bad


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m demo closed-loop", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lut", default="host-int8", type=closed_loop_lut,
                   help="the LUT the search reads: host-int8 (this machine's, measured first when missing) or any "
                        "LUT device or file (default host-int8)")
    p.add_argument("--ref", default="efficientpose_a", help="reference arch (shipped name or file; default "
                                                           "efficientpose_a)")
    p.add_argument("--ratio", type=positive_float, default=0.7,
                   help="target = ratio x the reference's measured latency (default 0.7)")
    p.add_argument("--tolerance", type=positive_float, default=0.15,
                   help="pass when |measured - target| <= tolerance x target (default 0.15)")
    p.add_argument("--space", default="default", help="search-space file or shipped name (model/spaces; default "
                                                       "default)")
    p.add_argument("--data", type=data_dir, help="COCO tree for the search and the int8 calibration crops "
                                                "(default: bundled data/coco-mini)")
    p.add_argument("--epochs", type=positive_int, help="search epochs (default: the search's demo schedule)")
    p.add_argument("--limit", type=positive_int, help="search on the first N persons only (quick runs)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--runtime-threads", type=positive_int, help="interpreter threads (default: the LUT header's, "
                                                               "else 1)")
    p.add_argument("--clock", choices=("wall", "cpu"), help="timing clock (default: the LUT header's, else wall)")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs per network (default 50)")
    p.add_argument("--warmup", type=nonneg_int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--allow-foreign-lut", action="store_true",
                   help="use a host LUT measured on another machine (default: refuse)")
    p.add_argument("--out", type=output_dir, default=RUNS / "closed-loop", help="run folder (default "
                                                                               "runs/closed-loop)")
    p.add_argument("--force", action="store_true", help="redo every step")
    return p


def _int8_file(artifacts: Path) -> Path:
    from posekit import manifest as manifest_file

    m = manifest_file.load(artifacts, formats=("tflite",))
    files = [a["file"] for a in m["artifacts"] if a["precision"] == "int8"]
    if len(files) != 1:
        raise UserError(f"{artifacts / 'manifest.json'}: artifacts: expected one full-integer int8 .tflite, found "
                        f"{len(files)}")
    return artifacts / files[0]


def _median(bench_json: Path, file: Path) -> float:
    rows = [r for r in json.loads(bench_json.read_text())["results"] if Path(r["file"]) == file]
    if len(rows) != 1:
        raise UserError(f"{bench_json}: results: no single row for {file}")
    return float(rows[0]["median_ms"])


def _write_if_changed(path: Path, text: str) -> Path:
    """Content-keyed: an unchanged input keeps its mtime, so the steps after it stay fresh."""
    if not (path.is_file() and path.read_text() == text):
        atomic_write_text(path, text)
    return path


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    t0 = time.monotonic()
    from model.arch import to_yaml
    from model.latency import load_lut, lut_kernels
    from model.space import load_space, reference_arch, resolve_space

    py, out = sys.executable, Path(a.out)
    space, space_file = load_space(a.space), resolve_space(a.space)
    lut_file = resolve_lut(a.lut)
    foreign = ["--allow-foreign-lut"] if a.allow_foreign_lut else []
    data = ["--data", a.data] if a.data else []
    if lut_file.is_file():  # the LUT's checks (a host LUT of another machine: one line) before any long step
        load_lut(a.lut, space, allow_foreign=a.allow_foreign_lut or None)
    ref = reference_arch(a.ref, space)
    ref_yaml = _write_if_changed(out / "reference_arch.yaml", to_yaml(ref.to_dict(), "closed loop: the reference"))

    first = []
    if not lut_file.is_file():
        # the fast pass `make search DEVICE=host-int8` measures with: the space's keys, 3 x 2 timed runs each
        first.append(Step("lut", [py, "-m", "device_bench", "lut", "--device", a.lut, "--space", str(space_file),
                                  "--no-shipped-archs", "--rounds", "3", "--per-visit", "2", *data],
                          [space_file], [lut_file]))
    ref_dir, bench_ref = out / "reference", out / "reference_bench.json"
    first.append(Step("reference", [py, "-m", "convert", "--arch", str(ref_yaml), "--out", str(ref_dir), *INT8,
                                    *data], [ref_yaml], [ref_dir / "manifest.json"]))
    total = len(first) + 4
    run_steps(first, out / "logs", a.force, 1, total)

    lut = load_lut(a.lut, space, allow_foreign=a.allow_foreign_lut or None)
    threads = a.runtime_threads or int(lut.header.get("threads") or 1)
    clock = a.clock or ("cpu" if str(lut.header.get("clock", "wall")).startswith("cpu") else "wall")
    if clock == "cpu" and threads != 1:
        raise UserError(f"--clock cpu measures one thread's CPU time; the runtime uses {threads} threads")
    kernels = lut_kernels(lut)  # the networks are timed with the kernel set the LUT's parts were timed with
    timing = ["--threads", str(threads), "--clock", clock, "--kernels", kernels, "--runs", str(a.runs), "--warmup",
              str(a.warmup), "--no-profile"]
    ref_tfl = _int8_file(ref_dir)
    run_steps([Step("time-ref", [py, "-m", "device_bench", "bench", "--model", str(ref_tfl), "--json",
                                 str(bench_ref), *timing], [ref_tfl], [bench_ref])],
              out / "logs", a.force, len(first) + 1, total)
    ref_ms = _median(bench_ref, ref_tfl)
    target = a.ratio * ref_ms
    # A LUT with a fitted calibration (device_bench fidelity --calibrate) keeps it; else one point: the reference.
    calibrate = [] if lut.header.get("calibration") else ["--ref-ms", f"{ref_ms:.6g}"]
    search_dir, derived_dir, bench = out / "search", out / "derived", out / "bench.json"
    arch_yaml = search_dir / "arch.yaml"
    search = [py, "-m", "search", "--device", a.lut, "--space", str(space_file), "--target-ref", a.ref,
              "--target-ms", f"{target:.6g}", *calibrate, "--seed", str(a.seed), "--out", str(search_dir),
              *(["--epochs", str(a.epochs)] if a.epochs else []), *(["--limit", str(a.limit)] if a.limit else []),
              *data, *foreign]
    second = [Step("search", search, [lut_file, space_file, bench_ref], [arch_yaml]),
              Step("derived", [py, "-m", "convert", "--arch", str(arch_yaml), "--out", str(derived_dir), *INT8,
                               *data], [arch_yaml], [derived_dir / "manifest.json"])]
    run_steps(second, out / "logs", a.force, len(first) + 2, total)
    tfl = _int8_file(derived_dir)
    run_steps([Step("time-both", [py, "-m", "device_bench", "bench", "--model", str(ref_tfl), str(tfl), "--json",
                                  str(bench), *timing], [ref_tfl, tfl], [bench])],
              out / "logs", a.force, total, total)

    from model.arch import load

    arch = load(arch_yaml)
    ref_again, measured = _median(bench, ref_tfl), _median(bench, tfl)
    # Judged in one run: the derived net against ratio x the reference timed interleaved with it (the machine's
    # drift between step 3 and step 6 cancels); the search's own target (step 3's time) is reported beside it.
    err = (measured - a.ratio * ref_again) / (a.ratio * ref_again)
    res = {
        "lut": str(lut.path), "lut_header": {k: lut.header.get(k) for k in ("device", "runtime", "precision",
                                                                              "threads", "clock", "kernels",
                                                                              "calibration")},
        "reference": ref.name, "reference_ms": ref_ms, "reference_ms_remeasured": ref_again, "ratio": a.ratio,
        "target_ms": target, "derived_blocks": [b.op for b in arch.blocks],
        "derived_lut_ms": arch.meta.get("lut_latency_ms"), "derived_calibrated_ms": arch.meta.get(
            "calibrated_latency_ms"), "reference_lut_ms": lut.latency(ref), "calibration": (
            arch.meta.get("search", {}).get("calibration") or lut.header.get("calibration")),
        "derived_measured_ms": measured, "error_vs_target": (measured - target) / target,
        "error_vs_remeasured_target": err,
        "tolerance": a.tolerance, "pass": abs(err) <= a.tolerance, "runtime_threads": threads, "clock": clock,
        "kernels": kernels,
        "tflite": {"reference": str(ref_tfl), "derived": str(tfl)}, "search_command": search[1:],
    }
    atomic_write_json(out / "closed_loop.json", res)
    print(f"searched for {target:.2f} ms ({a.ratio} x {ref.name} measured {ref_ms:.2f} ms; derived LUT "
          f"{res['derived_lut_ms']:.2f} ms); one interleaved run ({kernels}): {ref.name} {ref_again:.2f} ms (LUT "
          f"{res['reference_lut_ms']:.2f} ms), derived {measured:.2f} ms = {measured / ref_again:.3f} x, "
          f"{100 * err:+.1f}% from {a.ratio} x ({'PASS' if res['pass'] else 'FAIL'} at +-{100 * a.tolerance:.0f}%)\n"
          f"{out / 'closed_loop.json'}; re-time with: make bench MODEL={tfl}; total {time.monotonic() - t0:.0f} s")
    return 0 if res["pass"] else 1
