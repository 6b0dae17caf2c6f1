"""Whole-model benchmark: median and p90 latency of a .tflite (or every tflite artifact of a manifest), on the host
(ai_edge_litert, XNNPACK and builtin kernels interleaved in one run), on a phone (benchmark_model with op
profiling) or on macOS (Core ML, per compute unit).

Per-op profile on the host: the ai_edge_litert Python Interpreter exposes no op profiler, so the host report
lists the op census (op type x compute dtype) and, when the manifest names an arch and a host LUT covers it, the
per-part latencies from that LUT (each part measured alone).
"""

from __future__ import annotations

from pathlib import Path

from model.arch import from_dict
from model.latency import load_lut, network_keys
from posekit import manifest as manifest_file
from posekit.errors import UserError
from posekit.io import atomic_write_json
from runtime.artifact_check import check_artifact

from .timing import check_clock, round_robin, summary


def _tflite_artifacts(model_dir: Path) -> tuple[dict, list[dict]]:
    manifest = manifest_file.load(model_dir, formats=("tflite",))  # the one reader: schema, files on disk
    return manifest, manifest["artifacts"]


def _print_table(rows: list[tuple[str, dict]]) -> None:
    w = max(len(n) for n, _ in rows)
    print(f"{'model':<{w}}  {'median ms':>10} {'p90 ms':>9} {'min ms':>9} {'n':>5}")
    for name, s in rows:
        print(f"{name:<{w}}  {s['median_ms']:10.3f} {s['p90_ms']:9.3f} {s['min_ms']:9.3f} {s['n']:5d}")


def _census(path: Path) -> None:
    from runtime.tflite_flatbuffer import op_dtypes

    ops = sorted(op_dtypes(path).items(), key=lambda kv: -kv[1])
    # No per-op timing from ai-edge-litert 2.3.0 (checked): the Interpreter and CompiledModel Python wrappers expose
    # no profiler (no "profil" string in _pywrap_litert_{interpreter,compiled_model}_wrapper.so;
    # experimental_force_delegate_node_profiling has no getter), tools/benchmark_litert_model.py times whole runs
    # only, and while libLiteRt.so exports LiteRtCompiledModelGetProfiler / LiteRtGetProfileSummary, the runtime
    # options that switch profiling on (Lrt*RuntimeOptions) are not exported (`nm -D libLiteRt.so`). On a phone,
    # benchmark_model --enable_op_profiling gives the real per-op table (`bench --device <serial>`).
    print("op census (per-op timing is not exposed by the ai_edge_litert 2.3.0 Python API): "
          + ", ".join(f"{k} x{v}" for k, v in ops))


def _lut_profile(arch_dict: dict, device: str, top: int = 8, allow_foreign: bool = False) -> None:
    """Per-part latencies from this machine's host LUT, when it covers the manifest's arch. A LUT measured on
    another machine is not shown (one line says why), unless allowed."""
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
    print(f"per-part profile from {lut.path} (parts timed alone; sum {total:.2f} ms):")
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


def bench_host(args) -> list[tuple[str, dict]]:
    from .host import runner

    if args.model:
        targets, meta, manifest = {}, {}, None
        for path in map(Path, args.model):
            if not path.is_file() or path.suffix != ".tflite":
                raise UserError(f"{path}: not a .tflite file")
            check_artifact(path, *manifest_file.listing(path))  # a damaged or changed file: one line, not a crash
            name = f"{path} [{_kernels(args.xnnpack)}]" if len(args.model) > 1 else \
                f"{path.name} [{_kernels(args.xnnpack)}]"
            if name in targets:
                raise UserError(f"--model {path}: given twice")
            targets[name] = (path, args.xnnpack)
            meta[name] = {"file": str(path), "precision": None, "kernels": _kernels(args.xnnpack)}
    else:
        d = Path(args.model_dir)
        manifest, arts = _tflite_artifacts(d)
        targets, meta = {}, {}
        for a in arts:
            check_artifact(d / a["file"], a["sha256"], f"{d / 'manifest.json'}: {a['file']}")
            for xnn in (True, False):
                name = f"{a['file']} {a['precision']} [{_kernels(xnn)}]"
                targets[name] = (d / a["file"], xnn)
                meta[name] = {"file": a["file"], "precision": a["precision"], "kernels": _kernels(xnn)}
        routed = _routed_targets(d, arts, targets, meta)  # noqa: F841 (the temp folder lives until the bench ends)
    runners = {}
    for name, (p, xnn) in targets.items():
        try:
            runners[name] = runner(p, args.threads, xnn)
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
    _census(next(iter(targets.values()))[0])
    fastest, profiles = _fastest(rows, meta), []
    if not getattr(args, "no_profile", False):  # the per-op profile of each file, on both kernel sets (issue 27)
        profiles = _op_profiles({p: ("xnnpack",) if meta[n]["kernels"] == ROUTED else ("xnnpack", "builtin")
                      for n, (p, _) in targets.items()})
    for line in decode_cost(rows, meta):
        print(line)
    if manifest and manifest.get("arch"):
        _lut_profile(manifest["arch"], "host", allow_foreign=getattr(args, "allow_foreign_lut", False))
    if args.json:
        atomic_write_json(args.json, {"device": "host", "threads": args.threads, "clock": clock,
                                      "results": [{"name": n, **meta[n], **s} for n, s in rows],
                                      "fastest_kernels": fastest, "profiles": profiles})
        print(f"wrote {args.json}")
    return rows


def _fastest(rows: list[tuple[str, dict]], meta: dict) -> dict[str, dict]:
    """{file: {kernels, median_ms}} of the fastest kernel set per file, printed with the int8 / fp32 ratio under the
    default kernels (XNNPACK) and under each file's fastest (XNNPACK's >25-tap depthwise slow path on x86 makes
    builtin the fastest for int8 here: python -m runtime.dwconv_repro)."""
    best: dict[str, dict] = {}
    default: dict[str, float] = {}
    routed: dict[str, float] = {}
    for n, s in rows:
        f, k = meta[n]["file"], meta[n]["kernels"]
        if f not in best or s["median_ms"] < best[f]["median_ms"]:
            best[f] = {"kernels": k, "median_ms": s["median_ms"], "precision": meta[n]["precision"]}
        if k == "xnnpack":
            default[f] = s["median_ms"]
        if k == ROUTED:
            routed[f] = s["median_ms"]
    print("fastest kernels: " + ", ".join(f"{Path(f).name} {b['kernels']} ({b['median_ms']:.3f} ms)"
                                          for f, b in best.items()))
    by_prec = {b["precision"]: f for f, b in best.items() if b["precision"]}
    if "fp32" in by_prec and "int8" in by_prec and by_prec["fp32"] in default and by_prec["int8"] in default:
        f32, i8 = by_prec["fp32"], by_prec["int8"]
        print(f"int8 / fp32: {default[i8] / default[f32]:.2f}x under the default kernels (xnnpack), "
              f"{best[i8]['median_ms'] / best[f32]['median_ms']:.2f}x under each file's fastest "
              f"(int8 {best[i8]['kernels']}, fp32 {best[f32]['kernels']})")
        if i8 in routed:
            print(f"int8 / fp32 with >25-tap depthwise convs routed to builtin (quantize/xnnpack_route.py): "
                  f"int8 routed / fp32 as converted {routed[i8] / default[f32]:.2f}x"
                  + (f", both routed {routed[i8] / routed[f32]:.2f}x" if f32 in routed else ""))
    return best


def _op_profiles(paths: dict) -> list[dict]:
    from runtime.tflite_profile import format_profile, profile_tflite

    out = []
    for path, kernels in paths.items():
        for p in profile_tflite(path, kernels).values():
            print(format_profile(p, top=8))
            out.append({"file": str(path), **p.to_json()})
    return out


ROUTED = "xnnpack+builtin-dwconv"


def _routed_targets(d: Path, arts: list[dict], targets: dict, meta: dict):
    """Each file with its >25-tap depthwise convs routed to the builtin kernels (quantize/xnnpack_route.py: XNNPACK's
    slow path for them on x86), timed beside the file as converted; the copies live in a temp folder (returned,
    removed when dropped)."""
    import tempfile

    from quantize.xnnpack_route import route_large_dwconv

    tmp = tempfile.TemporaryDirectory(prefix="bench-routed-")
    for a in arts:
        dst = Path(tmp.name) / Path(a["file"]).name
        if route_large_dwconv(d / a["file"], dst):
            name = f"{a['file']} {a['precision']} [{ROUTED}]"
            targets[name] = (dst, True)
            meta[name] = {"file": a["file"], "precision": a["precision"], "kernels": ROUTED}
    return tmp


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
