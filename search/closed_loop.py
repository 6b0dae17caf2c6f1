"""Closing the loop on a real runtime: search on the host-int8 LUT with a target of `ratio` x EfficientPose-A's
measured int8 latency, convert the derived arch to int8 TFLite and time it with the same interpreter.

    python -m search closed-loop [--lut host-int8] [--ref efficientpose_a] [--ratio 0.7] [search options]

The reference is EfficientPose-A's blocks with the search space's stem and head (the part the search cannot change
is then the same in both), converted by `quantize.tflite.ptq_to_tflite(deploy_model(net), ..., precision="int8")` and
timed by `runtime.tflite.interpreter` (XNNPACK, --runtime-threads, interleaved A/B repeats, median). Latency
does not depend on the weight values, so both networks keep their initial weights (calibrated on real crops).
Writes <out>/closed_loop.json and the two .tflite files (`make bench MODEL=<file>` re-times them).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from model.arch import Arch, load
from model.latency import lut_device
from posekit.cli import ArgumentParser, positive_float, positive_int
from posekit.errors import UserError
from posekit.io import atomic_write_json


def ref_arch(name: str, space) -> Arch:
    from .cost import reference_arch

    a = load(name)
    if a.stem != space.stem or len(a.blocks) != len(space.layers()):
        raise UserError(f"--ref {name}: its stem/blocks do not match search space {space.name}")
    return reference_arch(name, space)  # built from a dict with the space's head, not mutated


def calib_batches(input_size, n: int = 8, data: str | None = None) -> list[torch.Tensor]:
    """Real crops from --data (default the bundled COCO): quantize's one calibration source, as convert's."""
    from quantize.calibration import calibration_batches

    return calibration_batches(tuple(input_size), data, n)


def to_int8(arch: Arch, path: Path, calib) -> Path:
    from model.deploy import deploy_model
    from model.net import build
    from quantize.tflite import ptq_to_tflite

    torch.manual_seed(0)
    net = build(arch).eval()
    with torch.no_grad():  # a few forward passes in train mode give BN realistic running statistics
        net.train()
        for b in calib:
            net(b)
        net.eval()
    return ptq_to_tflite(deploy_model(net), calib[0], path, precision="int8", calib=calib)


def time_tflite(paths: list[Path], threads: int, repeats: int, warmup: int = 5, clock: str = "wall") -> list[float]:
    """Median ms per model, round-robin over the models so the machine's noise spreads evenly. clock "cpu" is the
    calling thread's CPU time (1 thread only): on a shared machine it leaves out the time other jobs hold the core."""
    from runtime.tflite import interpreter, io_details, run

    now = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}[clock]
    its, xs = [], []
    for p in paths:
        it = interpreter(p, threads=threads)
        shape = io_details(it)["inputs"][0]["shape"]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(warmup):
            run(it, x)
        its.append(it)
        xs.append(x)
    times = [[] for _ in paths]
    for _ in range(repeats):
        for i, (it, x) in enumerate(zip(its, xs)):
            t = now()
            run(it, x)
            times[i].append((now() - t) / 1e6)
    return [float(np.median(t)) for t in times]


def build_parser() -> argparse.ArgumentParser:
    from . import cli

    p = ArgumentParser(prog="python -m search closed-loop", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lut", default="host-int8", type=lut_device,
                   help="LUT measured on this host in int8 (luts/host-int8.json)")
    p.add_argument("--ref", default="efficientpose_a", help="reference arch (shipped name or file)")
    p.add_argument("--ratio", type=positive_float, default=0.7,
                   help="target = ratio x the reference's measured latency")
    p.add_argument("--ref-ms", type=positive_float, help="use this reference latency instead of measuring it")
    p.add_argument("--tolerance", type=positive_float, default=0.15,
                   help="pass when |measured - target| <= tol x target")
    p.add_argument("--runtime-threads", type=positive_int,
                   help="interpreter threads (default: the LUT header's, else 1)")
    p.add_argument("--repeats", type=positive_int, default=50)
    p.add_argument("--clock", choices=("wall", "cpu"), help="timing clock (default: the LUT header's, else wall)")
    p.add_argument("--out", default="runs/search/closed-loop")
    cli.add_search_args(p, device_required=False)
    return p


def main(argv) -> int:
    from . import cli
    from .loop import config_dict

    a = build_parser().parse_args(argv)
    a.device, a.resume, a.target_ms = a.lut, False, None
    cli.setup_threads(a)
    cfg = cli.build_config(a, out=a.out)
    out = Path(a.out)

    from model.latency import load_lut
    from model.space import load_space

    space = load_space(a.space)
    lut = load_lut(a.lut, space)  # this machine's host LUT: `make lut DEVICE=host-int8` measures it
    threads = a.runtime_threads or int(lut.header.get("threads") or 1)
    clock = a.clock or ("cpu" if str(lut.header.get("clock", "wall")).startswith("cpu") else "wall")
    if clock == "cpu" and threads != 1:
        raise UserError(f"--clock cpu measures one thread's CPU time; the runtime uses {threads} threads")
    ref = ref_arch(a.ref, space)
    calib = calib_batches(space.input_size, data=a.data)
    print(f"converting {ref.name} to int8 ...", flush=True)
    ref_tfl = to_int8(ref, out / f"{ref.name}_int8.tflite", calib)
    ref_ms = a.ref_ms or time_tflite([ref_tfl], threads, a.repeats, clock=clock)[0]
    cfg.target_ms = a.ratio * ref_ms
    ref_lut = lut.latency(ref)
    if not lut.header.get("calibration"):
        # The LUT's parts are timed alone; map their sum onto whole-network latency by the reference (one point).
        cfg.calibration = {"scale": ref_ms / ref_lut, "offset_ms": 0.0,
                           "fitted": f"one point: {ref.name} measured {ref_ms:.2f} ms / LUT sum {ref_lut:.2f} ms"}
        print(f"the LUT has no calibration: using {cfg.calibration['fitted']}", flush=True)
    print(f"{ref.name} int8 measured {ref_ms:.2f} ms ({threads} thread(s), {clock} clock); target {a.ratio} x = "
          f"{cfg.target_ms:.2f} ms", flush=True)
    s, arch, _ = cli.run_search(cfg)
    print(f"converting {arch.name} to int8 ...", flush=True)
    tfl = to_int8(arch, out / "derived_int8.tflite", calib)
    ref_again, measured = time_tflite([ref_tfl, tfl], threads, a.repeats, clock=clock)
    err = (measured - cfg.target_ms) / cfg.target_ms
    res = {
        "lut": str(lut.path), "lut_header": {k: lut.header.get(k) for k in ("device", "runtime", "precision",
                                                                              "threads", "calibration")},
        "reference": ref.name, "reference_ms": ref_ms, "reference_ms_remeasured": ref_again,
        "ratio": a.ratio, "target_ms": cfg.target_ms, "derived_blocks": [b.op for b in arch.blocks],
        "derived_lut_ms": arch.meta.get("lut_latency_ms"), "derived_calibrated_ms": arch.meta.get(
            "calibrated_latency_ms"), "reference_lut_ms": ref_lut,
        "calibration": cfg.calibration or lut.header.get("calibration"),
        "derived_measured_ms": measured, "error_vs_target": err,
        "error_vs_remeasured_target": (measured - a.ratio * ref_again) / (a.ratio * ref_again),
        "tolerance": a.tolerance, "pass": abs(err) <= a.tolerance, "runtime_threads": threads, "clock": clock,
        "tflite": {"reference": str(ref_tfl), "derived": str(tfl)}, "search_config": config_dict(cfg),
    }
    atomic_write_json(out / "closed_loop.json", res)
    print(f"target {cfg.target_ms:.2f} ms; derived arch: LUT {res['derived_lut_ms']:.2f} ms, measured int8 "
          f"{measured:.2f} ms -> {100 * err:+.1f}% ({'PASS' if res['pass'] else 'FAIL'} at +-{100 * a.tolerance:.0f}%)"
          f"; {ref.name} re-measured {ref_again:.2f} ms (LUT {res['reference_lut_ms']:.2f} ms)")
    print(f"re-time with: make bench MODEL={tfl}   and   make bench MODEL={ref_tfl}")
    return 0 if res["pass"] else 1
