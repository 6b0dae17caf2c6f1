"""python -m device_bench {lut,predict,bench,fidelity}: per-op latency tables measured on real targets."""

from __future__ import annotations

import argparse

from posekit.cli import (
    ArgumentParser,
    data_dir,
    int_range,
    main_guard,
    nonneg_int,
    output_dir_text,
    output_file_text,
    positive_int,
    seed_int,
)
from posekit.errors import UserError
from runtime.coreml_runtime import COMPUTE_UNITS
from runtime.tflite_kernels import kernel_choice


def cpu_mask(s: str) -> str:
    """--taskset: a non-zero hexadecimal CPU mask such as f0."""
    try:
        assert int(s, 16) > 0
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"expected a non-zero hexadecimal CPU mask such as f0, got {s!r}") from None
    return s


cpu_mask.bad = ["0", "xyz"]


def compute_units(s: str) -> str:
    """--compute-units: a comma list of Core ML compute units."""
    bad = [u for u in s.split(",") if u not in COMPUTE_UNITS]
    if bad or not s:
        raise argparse.ArgumentTypeError(f"{','.join(bad) or s!r}: expected a comma list of {', '.join(COMPUTE_UNITS)}")
    return s


compute_units.bad = ["GPU", "CPU_ONLY,NPU", ""]


def bench_kernels(s: str) -> str:
    """bench --kernels: all, auto or a kernel set (runtime/tflite_kernels.py, the one registry)."""
    from runtime.tflite_kernels import kernel_choice

    return s if s == "all" else kernel_choice(s)


bench_kernels.bad = ["xnnpak", "", "builtin-dwconv"]


def _foreign(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-foreign-lut", action="store_true",
                   help="use a host LUT whose device fingerprint is not this machine's (numbers from another CPU "
                        "or runtime version mislead; default: refuse)")


def _common(p: argparse.ArgumentParser, clock: str = "auto") -> None:
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads for the runtime (default 1)")
    p.add_argument("--clock", default=clock, choices=("auto", "wall", "cpu"),
                   help=f"host timing: wall-clock latency, or the calling thread's CPU time (--threads 1 only: the "
                        f"runtime then does all its work on that thread; equal to latency on an idle core and immune "
                        f"to other jobs on a shared machine); auto = cpu with 1 thread, else wall (default {clock})")
    p.add_argument("--no-xnnpack", dest="xnnpack", action="store_false",
                   help="TFLite's builtin kernels instead of the XNNPACK delegate")


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m device_bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("lut", help="measure a LUT (missing keys only: a killed run resumes)",
                       description="Measure per-part latency into luts/<device>.json (host devices: this "
                                   "machine's luts/host/<device>-<fingerprint id>.json; keys with fewer samples "
                                   "than this run takes, e.g. from the search's fast first-use pass, are "
                                   "re-measured). Devices: host (fp32 LiteRT), "
                                   "host-int8, pixel / note10 / <adb serial>[,<serial>...] (a phone over adb), "
                                   "coreml (macOS).")
    p.add_argument("--device", required=True, help="host | host-int8 | pixel | note10 | <adb serial>[,...] | coreml")
    p.add_argument("--space", default="default", help="search space name or file (default: default); several "
                   "comma-separated (default,neck): one table with every space's keys")
    p.add_argument("--no-shipped-archs", action="store_true",
                   help="only the space's keys (default: also the shipped archs', own head and mbv1 head)")
    p.add_argument("--archs", nargs="*", help="more arch files whose keys the LUT must cover")
    p.add_argument("--quick", action="store_true", help="a few keys only (one network: every layer ir_k3_e3)")
    p.add_argument("--out", type=output_file_text, help="LUT file (default luts/<device>.json)")
    p.add_argument("--fresh", action="store_true", help="discard the existing file's entries")
    p.add_argument("--rounds", type=positive_int, default=15, help="interleaved rounds per key (host, coreml)")
    p.add_argument("--per-visit", type=positive_int, default=5, help="timed runs per key per round (host, coreml)")
    p.add_argument("--chunk", type=positive_int, default=12,
                   help="keys timed together; the LUT is saved after each chunk")
    p.add_argument("--cache", type=output_dir_text, help="converted parts (default runs/lut-cache)")
    p.add_argument("--data", type=data_dir, help="int8 calibration crops: dataset root (default: data/coco-mini)")
    p.add_argument("--kernels", type=kernel_choice, default="auto",
                   help="host: the kernel set the parts are timed with (runtime/tflite_kernels.py): auto (default: "
                        "the fastest for the precision on this host, timed on a reference net of the space, recorded "
                        "in the header; an existing LUT keeps the set it was measured with) or a set name")
    _common(p)
    a = p.add_argument_group("android")
    a.add_argument("--adb", help="adb binary (default: adb on PATH)")
    a.add_argument("--serial", help="adb serial for --device pixel/note10 when several devices are attached")
    a.add_argument("--benchmark-model", help="TFLite's android benchmark_model binary (pushed to the phone)")
    a.add_argument("--taskset", type=cpu_mask, help="CPU mask to pin benchmark_model to, e.g. f0 (big cores)")
    a.add_argument("--int8", action="store_true", help="time the int8 parts")
    a.add_argument("--passes", type=positive_int, default=3, help="interleaved passes over all ops")
    a.add_argument("--num-runs", type=positive_int, default=30)
    a.add_argument("--warmup-runs", type=nonneg_int, default=5)
    c = p.add_argument_group("coreml")
    c.add_argument("--compute-units", type=compute_units, default="CPU_ONLY,CPU_AND_GPU,ALL")
    c.add_argument("--coreml-precision", default="fp16", choices=("fp16", "fp32"))

    from .phone_profiles import PHONES

    p = sub.add_parser("predict", help="predict a phone profile from the published per-op tables",
                       description="Fit a latency model on data/published-luts and predict every key of our space "
                                   "(luts/<device>.json, leave-one-out MAPE in the header); --check-transfer: fit "
                                   "without one phone's table and compare its ranking of the shipped archs.")
    p.add_argument("--device", choices=(*PHONES, "all"), help="phone profile to write ('all': every one)")
    p.add_argument("--check-transfer", action="store_true",
                   help="print the cross-phone check (writes nothing)")
    p.add_argument("--space", default="default", help="search space(s), comma-separated (as for lut)")
    p.add_argument("--no-shipped-archs", action="store_true")
    p.add_argument("--archs", nargs="*")
    p.add_argument("--out", type=output_file_text, help="LUT file (default luts/<device>.json)")

    p = sub.add_parser("bench", help="whole-model latency: median, p90 and a per-op profile where available")
    p.add_argument("--device", default="host", help="host | <adb serial> | pixel | note10 | coreml")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", nargs="+", help="a .tflite (or .mlpackage on macOS); on the host several, timed in "
                                              "one interleaved run (the closed loop's A/B)")
    g.add_argument("--model-dir", help="artifacts/<model> with manifest.json: every tflite artifact, XNNPACK and "
                                       "builtin kernels, one interleaved run")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs per model (host: over interleaved rounds)")
    p.add_argument("--warmup", type=nonneg_int, default=5)
    p.add_argument("--adb")
    p.add_argument("--serial")
    p.add_argument("--benchmark-model")
    p.add_argument("--taskset", type=cpu_mask)
    p.add_argument("--json", type=output_file_text,
                   help="also write the host results to this JSON file (the demo reads it)")
    p.add_argument("--no-profile", action="store_true", help="host: leave out the per-op profile of each file")
    p.add_argument("--kernels", type=bench_kernels, default="all",
                   help="host kernel sets (runtime/tflite_kernels.py): all (default: every set that runs the file "
                        "differently, the fastest named), auto (each file on the set fastest_kernels picks: what "
                        "the closed loop and the LUT time with), or xnnpack | builtin | xnnpack+builtin-dwconv")
    _foreign(p)
    _common(p, clock="wall")

    p = sub.add_parser("fidelity", help="LUT sum vs measured whole networks: MAPE, Spearman, scatter plot")
    p.add_argument("--device", required=True, choices=("host", "host-int8"))
    p.add_argument("--lut", help="LUT file (default luts/<device>.json)")
    p.add_argument("--space", default="default")
    p.add_argument("--n", type=int_range(3), default=20, help="random archs (default 20; >= 3: the calibration's "
                                                                "leave-one-out needs two points per fit)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--rounds", type=positive_int, default=10)
    p.add_argument("--per-visit", type=positive_int, default=3)
    p.add_argument("--calibrate", action="store_true", help="store a linear calibration in the LUT header")
    p.add_argument("--plot", type=output_file_text, help="scatter plot path (default runs/fidelity/<device>.png)")
    p.add_argument("--data", type=data_dir, help="int8 calibration crops: dataset root (default: data/coco-mini)")
    _foreign(p)
    _common(p)
    return ap



def check_combinations(args) -> None:
    """Options that are valid alone but not together: refused after parsing, before any work (one line each)."""
    if hasattr(args, "clock"):  # timing's own rule, applied before an interpreter or a conversion starts
        from .timing import check_clock

        check_clock(args.clock, args.threads)
    kernels = getattr(args, "kernels", None)
    if args.cmd == "bench":
        if not args.xnnpack and kernels not in ("all", "builtin"):
            raise UserError(f"--no-xnnpack asks for the builtin kernels, --kernels {kernels} for another set: give one")
        if args.device in ("host", "coreml") and (args.taskset or args.benchmark_model or args.adb or args.serial):
            given = [o for o, v in (("--taskset", args.taskset), ("--benchmark-model", args.benchmark_model),
                                    ("--adb", args.adb), ("--serial", args.serial)) if v]
            raise UserError(f"{', '.join(given)}: phone options (adb + benchmark_model), not for --device "
                            f"{args.device}")
    if args.cmd == "lut" and hasattr(args, "space"):
        names = str(args.space).split(",")
        if any(not n.strip() for n in names):
            raise UserError(f"--space {args.space!r}: an empty entry in the comma list")
        if len(set(names)) != len(names):
            raise UserError(f"--space {args.space!r}: a space named twice")


@main_guard
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_combinations(args)
    if args.cmd == "lut":
        from .lut import run_lut

        run_lut(args)
    elif args.cmd == "predict":
        from .lut import run_predict

        run_predict(args)
    elif args.cmd == "bench":
        from .model_bench import run_bench

        run_bench(args)
    elif args.cmd == "fidelity":
        from .lut_accuracy import run_fidelity

        run_fidelity(args)
    return 0
