"""Does the LUT rank and price whole networks right? Sample random archs of the space, sum their LUT latency,
convert and time each whole network on the same runtime (interleaved), report MAPE and Spearman rank correlation,
save a scatter plot, and optionally store a linear calibration (measured ~ scale * LUT sum + offset) in the header."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from model.latency import load_lut, lut_kernels, network_keys
from model.net import build
from model.space import load_space
from posekit.errors import UserError
from posekit.io import atomic_write_json, save_figure

from . import host
from .lutfile import entry
from .timing import round_robin

OUT = host.REPO / "runs" / "fidelity"


def sample_archs(space, n: int, seed: int = 0):
    rng = random.Random(seed)
    return [space.arch_for(space.random_choices(rng), name=f"{space.name}-rand{seed}-{i}") for i in range(n)]


def convert_net(arch, precision: str, data: str | None = None) -> Path:
    """The deployed whole network as .tflite, cached. int8 is quantized from the cached fp32 file with the same
    ai-edge-quantizer recipe `quantize.tflite.ptq_to_tflite` applies after its own fp32 conversion (the same bytes out,
    one torch conversion less per network), calibrated on quantize's real crops (`data`: dataset root)."""
    import torch

    def tag(p):
        return hashlib.sha1(f"{'/'.join(network_keys(arch))}|{p}|{sorted(host.versions().items())}".encode()) \
            .hexdigest()[:16]

    h, w = arch.input_size
    fp32 = host.tflite_for(build(arch).eval(), torch.randn(1, 3, h, w),
                           OUT / "nets" / "fp32" / f"{tag('fp32')}.tflite", "fp32")
    if precision == "fp32":
        return fp32
    from quantize.calibration import calibration_batches
    from quantize.tflite import quantize_tflite

    path = OUT / "nets" / precision / f"{tag(f'{precision}|crops {data}')}.tflite"
    if not path.exists():
        calib = calibration_batches(arch, data, 4)  # what ships is calibrated on real crops: so is what is timed
        with host.quiet_fds():
            quantize_tflite(fp32, path, "int8", calib)  # writes atomically
    return path


def stats(pred: np.ndarray, meas: np.ndarray) -> dict:
    ape = np.abs(pred - meas) / meas
    return {"mape_pct": float(100 * ape.mean()), "max_ape_pct": float(100 * ape.max()),
            "spearman": float(spearmanr(pred, meas).statistic)}


def linear_calibration(pred: np.ndarray, meas: np.ndarray) -> dict:
    """Least-squares measured = scale * pred + offset, with its leave-one-out MAPE (the honest figure)."""
    scale, offset = np.polyfit(pred, meas, 1)
    loo = []
    for i in range(len(pred)):
        keep = np.arange(len(pred)) != i
        s, o = np.polyfit(pred[keep], meas[keep], 1)
        loo.append(abs(s * pred[i] + o - meas[i]) / meas[i])
    fitted = scale * pred + offset
    return {"scale": float(scale), "offset_ms": float(offset), "n": int(len(pred)),
            "mape_pct": float(100 * np.mean(np.abs(fitted - meas) / meas)), "loo_mape_pct": float(100 * np.mean(loo))}


def scatter(path: Path, pred, meas, title: str, cal: dict | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(pred, meas, s=18, label="random archs")
    lo, hi = 0.9 * min(min(pred), min(meas)), 1.1 * max(max(pred), max(meas))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    if cal:
        ax.plot([lo, hi], [cal["scale"] * lo + cal["offset_ms"], cal["scale"] * hi + cal["offset_ms"]], "r-", lw=1,
                label=f"calibration {cal['scale']:.3f}x + {cal['offset_ms']:.2f} ms")
    ax.set(xlabel="LUT sum (ms)", ylabel="measured whole network (ms)", title=title, xlim=(lo, hi), ylim=(lo, hi))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def run_fidelity(args) -> dict:
    space = load_space(args.space)
    allow = True if getattr(args, "allow_foreign_lut", False) else None
    lut = load_lut(args.lut or args.device, allow_foreign=allow)  # entries, header, fingerprint
    if lut.device != args.device:
        raise UserError(f"{lut.path}: a LUT for device '{lut.device}', not '{args.device}'; measure it with "
                        f"`make lut DEVICE={args.device}`")
    lut = load_lut(lut.path, space, allow_foreign=allow)
    if lut.header.get("backend") != "host-litert":
        raise UserError(f"{lut.path}: fidelity measures whole networks on this host, but the LUT's backend is "
                        f"{lut.header.get('backend')!r} (measure it with `make lut DEVICE={args.device}`)")
    precision, threads = lut.header["precision"], lut.header.get("threads") or 1
    kernels = lut_kernels(lut)
    clock = lut.header.get("clock", "wall")
    if args.threads != threads or args.xnnpack != (kernels != "builtin") or args.clock not in ("auto", clock):
        print(f"note: timing with the LUT's setup (threads={threads}, kernels={lut.header.get('kernels')}, "
              f"clock={clock})")
    archs = sample_archs(space, args.n, args.seed)
    pred = np.array([lut.latency(a) for a in archs])
    if precision == "int8":  # a --data without crops fails before any conversion
        from quantize.calibration import calibration_batches

        calibration_batches(archs[0], args.data, 4)
    runners = {}
    for a in tqdm(archs, desc=f"convert {args.n} nets ({precision})", unit="net"):
        runners[a.name] = host.runner(convert_net(a, precision, args.data), threads, kernels)
    samples = round_robin(runners, rounds=args.rounds, per_visit=args.per_visit, desc="timing nets", leave=True,
                          clock=clock)
    meas = np.array([entry(samples[a.name])[lut.stat] for a in archs])  # the statistic the LUT's entries hold
    res = {"device": args.device, "lut": str(lut.path), "n": args.n, "seed": args.seed, "threads": threads,
           "kernels": lut.header.get("kernels"), "clock": clock, "precision": precision,
           "statistic": lut.stat.removesuffix("_ms"),
           "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "raw": stats(pred, meas), "calibration": linear_calibration(pred, meas),
           "archs": [{"name": a.name, "blocks": [b.op for b in a.blocks], "lut_ms": float(p), "measured_ms": float(m)}
                     for a, p, m in zip(archs, pred, meas)]}
    cal = res["calibration"]
    res["calibrated"] = stats(cal["scale"] * pred + cal["offset_ms"], meas)
    plot = Path(args.plot) if args.plot else OUT / f"{args.device}.png"
    scatter(plot, pred, meas, f"{args.device}: LUT vs measured ({args.n} archs)", cal)
    atomic_write_json(plot.with_suffix(".json"), res)
    for a in res["archs"]:
        print(f"  {a['name']:<34} LUT {a['lut_ms']:8.2f} ms   measured {a['measured_ms']:8.2f} ms")
    r, c = res["raw"], res["calibrated"]
    print(f"{args.device} ({res['statistic']} of each's calls): {args.n} archs  MAPE {r['mape_pct']:.1f}% "
          f"(max {r['max_ape_pct']:.1f}%)  "
          f"Spearman {r['spearman']:.3f}  |  calibrated {cal['scale']:.3f}x + {cal['offset_ms']:.2f} ms: "
          f"MAPE {c['mape_pct']:.1f}% (leave-one-out {cal['loo_mape_pct']:.1f}%)")
    print(f"plot: {plot}  results: {plot.with_suffix('.json')}")
    if args.calibrate:
        lut.header["calibration"] = {"scale": cal["scale"], "offset_ms": cal["offset_ms"], "n": args.n,
                                     "seed": args.seed, "mape_pct_raw": r["mape_pct"],
                                     "loo_mape_pct_calibrated": cal["loo_mape_pct"], "date": res["date"]}
        lut.save()
        print(f"{lut.path}: calibration stored (LUT.latency(arch, calibrated=True) applies it)")
    return res
