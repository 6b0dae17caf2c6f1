"""`python -m device_bench lut` and `predict`: pick the parts, pick the backend, fill and write the LUT."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from model import arch as archlib
from model.latency import LUT, load_lut
from model.space import load_space
from posekit.errors import UserError
from posekit.fingerprint import differences, host_fingerprint

from . import lutfile
from .parts import Part, arch_parts, lut_parts, shipped_archs

HOST_DEVICES = {"host": "fp32", "host-int8": "int8"}  # model.latency.HOST_DEVICES, with their precision
PHONES = ("pixel", "note10")  # phone names the adb backend maps to --serial


def spaces_of(space_names: str) -> list:
    """--space: one search space, or several comma-separated (`default,neck`: one table serving both; the first
    names the LUT's search_space, header["search_spaces"] lists them all)."""
    return [load_space(n) for n in str(space_names).split(",")]


def select_parts(space_name: str, with_shipped: bool = True, arch_files: list[str] = (), quick: bool = False):
    """(space, parts, arch names): the space's keys (every space's, for `a,b`: the first is returned) plus the
    shipped archs' (own head and mbv1 head) and any given arch files; --quick keeps one network's keys (every layer
    ir_k3_e3: ~10 distinct keys)."""
    space, *others = spaces_of(space_name)
    if quick:
        a = space.arch_for(["ir_k3_e3"] * len(space.layers()) + space.first_choices()[len(space.layers()):],
                           name=f"{space.name}-quick")
        return space, arch_parts(a), [a.name]
    archs = (shipped_archs() if with_shipped else []) + [archlib.load(p) for p in arch_files]
    parts = lut_parts(space, archs)
    for other in others:
        for k, p in lut_parts(other).items():
            parts.setdefault(k, p)
    return space, parts, [a.name for a in archs]


def _report(lut: LUT, parts: dict[str, Part], measured: list[str]) -> None:
    miss = lut.missing(parts)
    print(f"{lut.path}: {len(parts)} keys, {len(measured)} measured by this run, {len(miss)} missing"
          + (f"; e.g. {miss[0]}" if miss else ""))


FAST = {"rounds": 3, "per_visit": 2}  # first use: enough to search with; `make lut DEVICE=host` refines (15 x 5)


KERNELS_REF = "efficientpose_a"  # the reference net `--kernels auto` times (the closed loop's default reference)
KERNELS_BUDGET_S = 5.0  # interleaved timing of the reference under each kernel set


def kernels_reference(space):
    """The net `--kernels auto` times: KERNELS_REF when it is a network of the space (same stem and layer count),
    else the space's network of each layer's first op (a space of other shapes, e.g. a test's tiny one)."""
    from model.arch import load as load_arch

    ref = load_arch(KERNELS_REF)
    if ref.stem == space.stem and len(ref.blocks) == len(space.layers()):
        return ref
    return space.arch_for([next(c for c in layer.candidates if c != "skip") for layer in space.layers()],
                          name=f"{space.name}-first-ops")


def choose_kernels(device: str, space, kernels: str, threads: int, clock: str, path: Path, fresh: bool,
                   data: str | None = None) -> tuple[str, dict, bool]:
    """(kernel set, the header's kernels_choice record, start the file afresh) for a host LUT. `kernels` auto: an
    existing file of this machine that recorded its choice keeps it (its entries were timed with it); otherwise the
    reference net (kernels_reference, converted at the LUT's precision as a whole network) is timed under every kernel
    set (runtime.tflite_kernel_choice.fastest_kernels), the fastest taken; an existing file timed with another set
    is then measured again from scratch (an explicit --kernels that differs is refused by open_for_update)."""
    import json

    from runtime.tflite_kernel_choice import fastest_kernels
    from runtime.tflite_kernels import AUTO

    old = None
    if path.is_file() and not fresh:
        try:
            old = json.loads(path.read_text())["header"]
        except (OSError, ValueError, KeyError, TypeError):
            old = None  # open_for_update names the corrupt file
    if kernels != AUTO:
        return kernels, {"by": f"--kernels {kernels}"}, False
    if isinstance(old, dict) and isinstance(old.get("kernels_choice"), dict) and old.get("threads") == threads \
            and not differences(old.get("fingerprint"), host_fingerprint(), threads):  # this machine's choice
        print(f"{path}: kernels {old['kernels']} (chosen when it was first measured: "
              f"{_choice_text(old['kernels_choice'])})")
        return old["kernels"], old["kernels_choice"], False
    from .lut_accuracy import convert_net

    ref = kernels_reference(space)
    precision = HOST_DEVICES[device]
    if precision == "int8":  # a --data without crops is refused before the reference's float conversion
        from quantize.calibration import calibration_batches

        calibration_batches(ref, data, 1)
    print(f"choosing the kernel set: {ref.name} {precision} timed under each set ...", flush=True)
    tfl = convert_net(ref, precision, data)
    name, ms = fastest_kernels(tfl, threads, budget_s=KERNELS_BUDGET_S, clock=clock)
    choice = {"by": "--kernels auto: the fastest set for a whole reference net on this host",
              "reference": f"{ref.name} {precision} {ref.input_size[0]}x{ref.input_size[1]}", "ms": ms,
              "statistic": "min", "chosen": name}
    print(f"kernels {name}: {_choice_text(choice)}")
    restart = isinstance(old, dict) and old.get("kernels") != name
    if restart:
        print(f"{path}: measured with kernels {old.get('kernels')}, the fastest here is {name}: measuring it again")
    return name, choice, restart


def _choice_text(c: dict) -> str:
    if "ms" not in c:
        return c.get("by", "?")
    return f"{c.get('reference')}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in c["ms"].items())


def measure_host(device: str, space, parts, arch_names, *, threads: int = 1, kernels: str = "auto",
                 clock: str = "auto", rounds: int = 15, per_visit: int = 5, chunk: int = 12, cache=None,
                 out=None, fresh: bool = False, data: str | None = None, also_spaces=()) -> LUT:
    """Measure (missing or under-sampled keys of) this machine's host LUT; the header carries its fingerprint and
    the kernel set the parts were timed with (`kernels` auto: choose_kernels)."""
    from model.deploy import TFLITE_REWRITE

    from . import host
    from .timing import check_clock

    precision = HOST_DEVICES[device]
    clock = check_clock(clock, threads)
    kernels, choice, restart = choose_kernels(device, space, kernels, threads, clock, lutfile.lut_path(device, out),
                                              fresh, data)
    fresh = fresh or restart
    header = lutfile.make_header(
        device, space, backend="host-litert", runtime="ai_edge_litert Interpreter",
        runtime_version=version("ai-edge-litert"), threads=threads, precision=precision, kernels=kernels,
        kernels_choice=choice, provenance="measured", archs=arch_names, clock=clock, also_spaces=also_spaces,
        fingerprint={**host_fingerprint(), "kernels": kernels, "threads": threads, "timing_clock": clock},
        converter=f"litert-torch {version('litert-torch')}, parts after model.deploy.deploy_model (head deconv: "
                  f"{TFLITE_REWRITE})",
        quantizer=f"ai-edge-quantizer {version('ai-edge-quantizer')} static_wi8_ai8, {host.CALIB_BATCHES} real "
                  f"calibration crops at each part's shape" if precision == "int8" else None,
        timing={"rounds": rounds, "per_visit": per_visit, "warmup": 3, "statistic": "min",
                "clock": "wall-clock latency" if clock == "wall" else "thread CPU time (= latency on an idle "
                                                                           "core, 1 thread)",
                "order": "round-robin over a chunk of keys, shuffled each round",
                "samples": "each entry's n; fewer than rounds x per_visit: a fast first-use pass, refined by "
                           "`make lut`"})
    lut = lutfile.open_for_update(lutfile.lut_path(device, out), header, fresh=fresh, replace_foreign=out is None)
    done = host.measure(lut, parts, precision, threads, kernels, rounds=rounds, per_visit=per_visit, chunk=chunk,
                        cache=Path(cache) if cache else host.CACHE, clock=clock,
                        data=data)
    _report(lut, parts, done)
    return lut


def run_host(args, space, parts, arch_names) -> LUT:
    kernels = args.kernels if args.xnnpack else "builtin"  # --no-xnnpack: the builtin kernels
    return measure_host(args.device, space, parts, arch_names, threads=args.threads, kernels=kernels,
                        clock=args.clock, rounds=args.rounds, per_visit=args.per_visit, chunk=args.chunk,
                        cache=args.cache, out=args.out, fresh=args.fresh, data=args.data,
                        also_spaces=spaces_of(args.space)[1:])


def ensure_lut(device_or_path, space, allow_foreign: bool | None = None) -> LUT:
    """`model.latency.load_lut`, but a host device with no LUT for this machine yet is measured first: a fast pass
    over the keys the space needs (3 rounds x 2 runs each; conversions are cached), which `make lut DEVICE=host`
    refines. Every other case (a phone, a path, a LUT of another machine) is exactly load_lut."""
    from model.latency import resolve_lut

    name = str(device_or_path)
    if name in HOST_DEVICES and not resolve_lut(name).is_file():
        parts = lut_parts(space)
        print(f"no {name} LUT for this machine yet: measuring the {len(parts)} keys the search space needs "
              f"(fast pass; `make lut DEVICE={name}` refines it) -> {resolve_lut(name)}", flush=True)
        measure_host(name, space, parts, [], **FAST)
    return load_lut(device_or_path, space, allow_foreign)


def run_android(args, space, parts, arch_names) -> list[LUT]:
    from . import android, host

    try:
        adb = android.find_adb(args.adb)
    except UserError as e:  # an unknown --device is read as an adb serial: say so
        others = [n for n in args.device.split(",") if n not in PHONES]
        raise UserError(f"--device {','.join(others)}: not host, host-int8, coreml or a phone profile, so read as an "
                        f"adb serial; {e}" if others else str(e)) from None
    if not args.benchmark_model:
        raise UserError("the Android backend needs TFLite's benchmark_model binary for the phone: pass "
                        "--benchmark-model /path/to/android_aarch64_benchmark_model")
    names = args.device.split(",")
    wanted = [args.serial if n in PHONES else n for n in names]
    serials = android.resolve_serials(adb, wanted)
    precision = "int8" if args.int8 else "fp32"
    cache = Path(args.cache) if args.cache else host.CACHE
    models = {k: host.convert_part(p, precision, cache) for k, p in parts.items() if not p.is_identity}
    jobs = []
    for name, serial in zip(names, serials):
        dev = android.Adb(serial, adb)
        android.setup_device(dev, args.benchmark_model)
        fp = android.device_fingerprint(dev, args.benchmark_model, args.taskset)
        model_name = fp["model"] or "unknown phone"
        header = lutfile.make_header(
            name, space, backend="android-adb", runtime="TFLite benchmark_model",
            runtime_version=Path(args.benchmark_model).name, threads=args.threads, precision=precision,
            kernels="xnnpack" if args.xnnpack else "builtin", provenance="measured",
            host=f"{model_name} (adb serial {serial})", archs=arch_names, taskset=args.taskset, fingerprint=fp,
            also_spaces=spaces_of(args.space)[1:],
            timing={"passes": args.passes, "num_runs": args.num_runs, "warmup_runs": args.warmup_runs,
                    "statistic": "median", "of": "passes of benchmark_model's average"})
        jobs.append((lutfile.open_for_update(lutfile.lut_path(name, args.out if len(names) == 1 else None), header,
                                             fresh=args.fresh), dev))
    done = android.measure_many(jobs, parts, models, threads=args.threads, runs=args.num_runs,
                                warmup=args.warmup_runs, passes=args.passes, xnnpack=args.xnnpack,
                                taskset=args.taskset, chunk=args.chunk)
    for lut, dev in jobs:
        _report(lut, parts, done[dev.serial])
    return [lut for lut, _ in jobs]


def run_coreml(args, space, parts, arch_names) -> list[LUT]:
    from . import apple

    apple.require_macos()
    from posekit.coreml_import import ct

    luts = {}
    for unit in args.compute_units.split(","):
        name = apple.device_name(unit)
        header = lutfile.make_header(name, space, backend="coreml", runtime="Core ML (coremltools MLModel.predict)",
                                     runtime_version=ct.__version__, threads=None, precision=args.coreml_precision,
                                     kernels=unit, provenance="measured", archs=arch_names,
                                     also_spaces=spaces_of(args.space)[1:],
                                     fingerprint={**host_fingerprint(runtime="coremltools"), "compute_units": unit})
        luts[unit] = lutfile.open_for_update(lutfile.lut_path(name), header, fresh=args.fresh)
    done = apple.measure(luts, parts, args.coreml_precision, rounds=args.rounds, per_visit=args.per_visit)
    for unit, lut in luts.items():
        _report(lut, parts, done[unit])
    return list(luts.values())


def run_lut(args):
    space, parts, arch_names = select_parts(args.space, not args.no_shipped_archs, args.archs or [], args.quick)
    if args.device in HOST_DEVICES:
        return run_host(args, space, parts, arch_names)
    if args.device == "coreml":
        return run_coreml(args, space, parts, arch_names)
    return run_android(args, space, parts, arch_names)


def run_predict(args):
    from . import phone_profiles

    try:
        from model.deploy import deploy_model
    except ImportError:
        deploy_model = None
    if args.check_transfer:
        return print_transfer(phone_profiles.check_transfer(deploy_model))
    if not args.device:
        phones = " | ".join((*phone_profiles.PHONES, "all"))
        raise UserError(f"predict: pass --device ({phones}) or --check-transfer")
    space, parts, arch_names = select_parts(args.space, not args.no_shipped_archs, args.archs or [])
    devices = phone_profiles.PHONES if args.device == "all" else (args.device,)
    if args.out and len(devices) > 1:
        raise UserError("--out names one file: pass one --device with it")
    luts = []
    for device in devices:
        fields, entries = phone_profiles.predict_lut(device, parts, deploy_model)
        src = phone_profiles.SOURCES[device]
        header = lutfile.make_header(device, space, backend="predicted",
                                     runtime="TFLite (published measurements)", runtime_version=None, threads=1
                                     if src.get("format") == "nnmeter" else None, precision="fp32",
                                     kernels="xnnpack" if src.get("format") == "nnmeter" else "unknown",
                                     host=src["phone"], archs=arch_names,
                                     also_spaces=spaces_of(args.space)[1:], **fields)
        lut = LUT(header, entries, lutfile.lut_path(device, args.out))
        lut.save()
        e = fields["error"]
        print(f"{lut.path}: {len(entries)} keys predicted from {e['n_entries']} published entries; leave-one-out "
              f"MAPE {e['loo_mape_pct']:.1f}% (median {e['loo_median_ape_pct']:.1f}%, max {e['loo_max_ape_pct']:.1f}%)"
              f"; {sum('how' in v for v in entries.values())} entries extrapolated (see their 'how')")
        luts.append(lut)
    return luts


def print_transfer(res: list[dict]) -> list[dict]:
    print("cross-phone transfer: fit without the held-out phone's table (on the other nn-Meter phones), predict "
          "its latency of the shipped archs; ranking vs the one its own table gives")
    for r in res:
        print(f"{r['held_out']:<9} (fit on {', '.join(r['fitted_on'])}): same ranking: "
              f"{'yes' if r['same_ranking'] else 'NO'}  Kendall tau {r['kendall_tau']:.2f}  |  its published rows: "
              f"MAPE {r['rows_mape_pct']:.1f}% raw, {r['rows_mape_pct_one_scale']:.1f}% after one scale "
              f"({r['scale']:.2f}x)")
        for n in r["rank_own"]:
            print(f"    {n:<30} own {r['own_ms'][n]:8.2f} ms   transferred {r['transferred_ms'][n]:8.2f} ms   "
                  f"rank {r['rank_own'].index(n) + 1} / {r['rank_transferred'].index(n) + 1}")
    return res
