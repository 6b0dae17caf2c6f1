"""Whole-model benchmark: median and p90 latency of a .tflite (or every tflite artifact of a manifest), on the host
(ai_edge_litert, XNNPACK and builtin kernels interleaved in one run), on a phone (benchmark_model with op
profiling) or on macOS (Core ML, per compute unit).

Kernel sets on the host (runtime/tflite_kernels.py): --kernels all times each file under every set that runs it as
a different program and names the fastest, with the int8 / fp32 ratio under the default and the fastest kernels;
auto times each file under the one set fastest_kernels picks; a set name times that set. Per-op profile on the host:
runtime/tflite_profile.py (each op timed alone), printed after the op census (op type x compute dtype), and, when
the manifest names an arch and a host LUT covers it, the per-part latencies from that LUT (each part measured
alone).
"""

from __future__ import annotations

from pathlib import Path

from model.arch import from_dict
from model.latency import load_lut, lut_kernels, network_keys
from posekit import manifest as manifest_file
from posekit.errors import UserError
from posekit.io import atomic_write_json
from runtime.artifact_check import check_artifact

from .timing import check_clock, round_robin, summary

ALL = "all"  # bench --kernels all: every kernel set that runs the file as a different program


def _tflite_artifacts(model_dir: Path) -> tuple[dict, list[dict]]:
    manifest = manifest_file.load(model_dir, formats=("tflite",))  # the one reader: schema, files on disk
    return manifest, manifest["artifacts"]


def _print_table(rows: list[tuple[str, dict]]) -> None:
    w = max(len(n) for n, _ in rows)
    print(f"{'model':<{w}}  {'median ms':>10} {'p90 ms':>9} {'min ms':>9} {'n':>5}")
    for name, s in rows:
        print(f"{name:<{w}}  {s['median_ms']:10.3f} {s['p90_ms']:9.3f} {s['min_ms']:9.3f} {s['n']:5d}")


def _census(path: Path, no_profile: bool = False) -> None:
    from runtime.tflite_flatbuffer import op_dtypes

    ops = sorted(op_dtypes(path).items(), key=lambda kv: -kv[1])
    where = "posenas profile FILE" if no_profile else "the per-op profiles below"
    print(f"op census (per-op times: {where}, runtime/tflite_profile.py): "
          + ", ".join(f"{k} x{v}" for k, v in ops))


def _lut_profile(arch_dict: dict, device: str, top: int = 8, allow_foreign: bool = False,
                 timed: tuple = ()) -> None:
    """Per-part latencies from this machine's host LUT, when it covers the manifest's arch. A LUT measured on
    another machine is not shown (one line says why), unless allowed; one timed with a kernel set this bench did
    not time is shown with a warning naming both (`timed`: the sets timed)."""
    try:
        arch = from_dict(arch_dict)
        lut = load_lut(device, allow_foreign=allow_foreign or None)
        keys = network_keys(arch)
        if lut.missing(keys):
            return
    except UserError as e:
        if "measured on" in str(e):  # the fingerprint check: say it, the bench itself stands
            print(f"note: no LUT profile: {e}")
        return
    ms = [(k, lut.ms(k)) for k in keys]
    total = sum(v for _, v in ms)
    if timed and lut_kernels(lut) not in timed:
        print(f"warning: {lut.path} was timed with kernels {lut_kernels(lut)}, this bench with {', '.join(timed)}: "
              f"its sums and these times describe different runtimes")
    print(f"per-part profile from {lut.path} (parts timed alone, kernels {lut_kernels(lut)}; sum {total:.2f} ms):")
    for k, v in sorted(ms, key=lambda kv: -kv[1])[:top]:
        print(f"  {v:8.3f} ms {100 * v / total:5.1f}%  {k}")


def decode_cost(rows: list[tuple[str, dict]], meta: dict) -> list[str]:
    """The in-graph decode's cost (issue 28): each decoded file (`*_kp.tflite`) against its plain twin timed in the
    same interleaved run with the same kernels, as a share of the plain network's time (fastest runs: other
    tenants of a shared machine only add time)."""
    by = {(meta[n]["file"], meta[n]["kernels"]): s for n, s in rows}
    out = []
    for (file, kernels), s in by.items():
        plain = by.get((file.replace("_kp.tflite", ".tflite"), kernels)) if file.endswith("_kp.tflite") else None
        if plain:
            d_min, d_med = s["min_ms"] - plain["min_ms"], s["median_ms"] - plain["median_ms"]
            out.append(f"decode in {file} [{kernels}]: {d_min:+.3f} ms min ({100 * d_min / plain['min_ms']:+.1f}% "
                       f"of the net), {d_med:+.3f} ms median ({100 * d_med / plain['median_ms']:+.1f}%)")
    return out


def _kernel_sets(path: Path, args) -> list[str]:
    """The kernel sets `--kernels` asks to time the file with: all (the distinct ones), auto (the fastest, chosen by
    runtime.tflite_kernels.fastest_kernels, printed with each set's time) or one named set."""
    from runtime.tflite_kernel_choice import fastest_kernels
    from runtime.tflite_kernels import AUTO, distinct_sets

    choice = getattr(args, "kernels", ALL)
    if choice == ALL and not getattr(args, "xnnpack", True):  # --no-xnnpack: the builtin kernels only
        return ["builtin"]
    if choice == ALL:
        return distinct_sets(path)
    if choice == AUTO:
        name, ms = fastest_kernels(path, args.threads, clock="cpu" if args.clock == "cpu" else "wall")
        print(f"kernels auto: {path.name} -> {name} (fastest runs: "
              + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()) + ")")
        return [name]
    return [choice]


def bench_host(args) -> list[tuple[str, dict]]:
    from .host import runner

    if args.model:
        files, manifest = [], None
        for path in map(Path, args.model):
            if not path.exists() or path.is_dir():
                raise UserError(f"--model {path}: {'a folder' if path.is_dir() else 'no such file'}")
            if not path.is_file() or path.suffix != ".tflite":
                raise UserError(f"{path}: not a .tflite file")
            check_artifact(path, *manifest_file.listing(path))  # a damaged or changed file: one line, not a crash
            if any(path.resolve() == f.resolve() for f, _, _ in files):
                link = " through a link" if path.is_symlink() else ""
                raise UserError(f"--model {path}: given twice (the same file{link})")
            # several files (the closed loop's A/B) may share a name: then each is named by its path
            files.append((path, path.name if len(args.model) == 1 else str(path), None))
    else:
        d = Path(args.model_dir)
        manifest, arts = _tflite_artifacts(d)
        files = []
        for a in arts:
            check_artifact(d / a["file"], a["sha256"], f"{d / 'manifest.json'}: {a['file']}")
            files.append((d / a["file"], a["file"], a["precision"]))
    targets, meta = {}, {}
    for p, file, precision in files:
        for k in _kernel_sets(p, args):
            name = f"{file}{f' {precision}' if precision else ''} [{k}]"
            targets[name] = (p, k)
            meta[name] = {"file": file if precision else str(p), "precision": precision, "kernels": k}
    runners = {}
    for name, (p, kernels) in targets.items():
        try:
            runners[name] = runner(p, args.threads, kernels)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{p}: the interpreter cannot load it ({str(e).splitlines()[0]})") from None
    per_visit = 5
    rounds = max(1, -(-args.runs // per_visit))
    clock = check_clock(args.clock, args.threads)
    samples = round_robin(runners, rounds=rounds, per_visit=per_visit, warmup=args.warmup, desc="bench",
                          clock=clock)
    rows = [(n, summary(s)) for n, s in samples.items()]
    print(f"host, {args.threads} thread(s), {rounds} interleaved rounds x {per_visit} runs, {clock} clock:")
    _print_table(rows)
    no_profile = getattr(args, "no_profile", False)
    _census(next(iter(targets.values()))[0], no_profile)
    fastest, profiles = _fastest(rows, meta), []
    if not no_profile:  # the per-op profile of each file, on each kernel set timed (issue 27)
        sets: dict[Path, tuple] = {}
        for p, k in targets.values():
            sets[p] = (*sets.get(p, ()), k)
        profiles = _op_profiles(sets)
    for line in decode_cost(rows, meta):
        print(line)
    if manifest and manifest.get("arch"):
        _lut_profile(manifest["arch"], "host", allow_foreign=getattr(args, "allow_foreign_lut", False),
                     timed=tuple(sorted({k for _, k in targets.values()})))
    if args.json:
        atomic_write_json(args.json, {"device": "host", "threads": args.threads, "clock": clock,
                                      "kernels_option": getattr(args, "kernels", ALL),
                                      "results": [{"name": n, **meta[n], **s} for n, s in rows],
                                      "fastest_kernels": fastest, "profiles": profiles})
        print(f"wrote {args.json}")
    return rows


def _fastest(rows: list[tuple[str, dict]], meta: dict) -> dict[str, dict]:
    """{file: {kernels, median_ms, precision}} of the fastest kernel set timed per file, printed with the int8 / fp32
    ratio under the default kernels (XNNPACK) and under each file's fastest (on this x86 host XNNPACK's >25-tap
    depthwise slow path makes another set the fastest for int8: python -m runtime.dwconv_repro)."""
    best: dict[str, dict] = {}
    default: dict[str, dict] = {}
    for n, s in rows:
        f, k = meta[n]["file"], meta[n]["kernels"]
        if f not in best or s["median_ms"] < best[f]["median_ms"]:
            best[f] = {"kernels": k, "median_ms": s["median_ms"], "min_ms": s["min_ms"],
                       "precision": meta[n]["precision"]}
        if k == "xnnpack":
            default[f] = s
    print("fastest kernels: " + ", ".join(f"{Path(f).name} {b['kernels']} ({b['median_ms']:.3f} ms)"
                                          for f, b in best.items()))
    by_prec = {b["precision"]: f for f, b in best.items() if b["precision"]}
    if "fp32" in by_prec and "int8" in by_prec:
        f32, i8 = by_prec["fp32"], by_prec["int8"]

        def ratio(a, b):  # medians, and fastest runs (a shared machine's other tenants only add time)
            return f"{a['median_ms'] / b['median_ms']:.2f}x (fastest runs {a['min_ms'] / b['min_ms']:.2f}x)"

        under_default = (f"{ratio(default[i8], default[f32])} under the default kernels (xnnpack), "
                         if i8 in default and f32 in default else "")
        print(f"int8 / fp32: {under_default}{ratio(best[i8], best[f32])} under the fastest kernels "
              f"(int8 {best[i8]['kernels']}, fp32 {best[f32]['kernels']})")
    return best


def _op_profiles(paths: dict) -> list[dict]:
    from runtime.tflite_profile import format_profile, profile_tflite

    out = []
    for path, kernels in paths.items():
        for p in profile_tflite(path, kernels).values():
            print(format_profile(p, top=8))
            out.append({"file": str(path), **p.to_json()})
    return out


def _kernels(xnnpack: bool) -> str:
    return "xnnpack" if xnnpack else "builtin"


def bench_android(args) -> dict:
    from . import android

    adb = android.find_adb(args.adb)
    if not args.model or len(args.model) != 1 or not args.model[0].endswith(".tflite"):
        raise UserError("bench on a phone takes --model file.tflite")
    if not args.benchmark_model:
        raise UserError("bench on a phone needs --benchmark-model /path/to/android_aarch64_benchmark_model")
    serial = android.resolve_serials(adb, [args.serial if args.device in ("pixel", "note10") else args.device])[0]
    dev = android.Adb(serial, adb)
    android.setup_device(dev, args.benchmark_model)
    remote = f"{android.REMOTE_DIR}/{Path(args.model[0]).name}"
    dev.push(args.model[0], remote)
    r = android.parse_benchmark_output(dev.shell(android.benchmark_cmd(
        remote, args.threads, args.runs, args.warmup, args.xnnpack, args.taskset, profile=True)))
    med = r.get("median_us", r["avg_us"]) / 1e3
    print(f"{serial}: avg {r['avg_us'] / 1e3:.3f} ms, median {med:.3f} ms, std {r['std_us'] / 1e3:.3f} ms, "
          f"n {r['count']} (benchmark_model prints no p90; min {r['min_us'] / 1e3:.3f}, max {r['max_us'] / 1e3:.3f})")
    from runtime.tflite_profile import format_profile

    print(format_profile(phone_profile(r, serial, _kernels(args.xnnpack)), top=15))
    return r


def phone_profile(r: dict, serial: str, kernels: str):
    """benchmark_model --enable_op_profiling's table (android.parse_benchmark_output) as the host profile's type."""
    from runtime.tflite_profile import OpProfile, OpTime

    ops = tuple(OpTime(None, op["type"], "", op["avg_ms"], op["name"]) for op in r["ops"])
    return OpProfile(source=f"{serial} benchmark_model --enable_op_profiling", kernels=kernels, ops=ops,
                     model_ms=r.get("median_us", r["avg_us"]) / 1e3)


def run_bench(args):
    if args.device == "host":
        return bench_host(args)
    if args.device == "coreml":
        return bench_coreml(args)
    return bench_android(args)


def _coreml_feed(ml) -> dict:
    """A random input for each of the model's inputs (multi-array or image), read from its spec."""
    import numpy as np

    feed = {}
    for inp in ml.get_spec().description.input:
        t = inp.type
        if t.WhichOneof("Type") == "imageType":
            from PIL import Image

            feed[inp.name] = Image.fromarray(np.random.default_rng(0).integers(
                0, 255, (t.imageType.height, t.imageType.width, 3), dtype=np.uint8))
        else:
            feed[inp.name] = np.random.default_rng(0).standard_normal(list(t.multiArrayType.shape)).astype("float32")
    return feed


def bench_coreml(args) -> list[tuple[str, dict]]:
    from runtime.coreml_runtime import COMPUTE_UNITS, mlmodel

    from .apple import require_macos

    require_macos()
    if args.model:
        paths = [Path(m) for m in args.model]
    else:
        d = Path(args.model_dir)
        from posekit import manifest as manifest_file

        paths = [d / a["file"] for a in manifest_file.load(d, formats=("coreml",))["artifacts"]]
    runners = {}
    for p in paths:
        for unit in COMPUTE_UNITS:
            ml = mlmodel(p, unit)
            feed = _coreml_feed(ml)
            runners[f"{p.name} [{unit}]"] = lambda ml=ml, feed=feed: ml.predict(feed)
    per_visit = 5
    samples = round_robin(runners, rounds=max(1, -(-args.runs // per_visit)), per_visit=per_visit,
                          warmup=args.warmup, desc="bench")
    rows = [(n, summary(s)) for n, s in samples.items()]
    _print_table(rows)
    return rows
