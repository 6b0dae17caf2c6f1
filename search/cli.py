"""python -m search --device pixel|note10|host|host-int8|flops|<lut.json>: differentiable NAS steered by a LUT.

The host-int8 target check on the real TFLite runtime (measure, search, convert, measure) spans stages: `python -m
demo closed-loop` runs this CLI as one of its steps.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from model.latency import lut_device
from posekit.cli import (
    ArgumentParser,
    data_dir,
    float_range,
    hxw_type,
    main_guard,
    nonneg_float,
    nonneg_int,
    output_dir_text,
    parse_hxw,
    positive_float,
    positive_int,
    seed_int,
)
from posekit.errors import UserError

# The demo: 53 persons in two halves, batch 4 -> 6 w steps + 6 alpha steps per epoch, ~200 alpha steps in all.
DEMO = {"epochs": 40, "warmup_epochs": 6, "input": "128x96", "batch_size": 4, "threads": 1, "alpha_lr": 0.3,
        "temperature_end": 0.1}
# --full: the nominal input (the LUT's) and a long schedule on the whole training set.
FULL = {"epochs": 100, "warmup_epochs": 20, "input": "256x192", "batch_size": 32, "threads": 0, "alpha_lr": 1e-3,
        "temperature_end": 0.2}


def parse_hw(s) -> tuple[int, int]:
    try:
        return parse_hxw(s, 16)
    except ValueError as e:
        raise UserError(f"--input: {e}") from None


def add_search_args(p: argparse.ArgumentParser, device_required: bool = True):
    if device_required:
        p.add_argument("--device", required=True, type=lut_device,
                       help="pixel | note10 | host | host-int8 (luts/<device>.json) | flops | path/to/lut.json")
    p.add_argument("--space", default="default", help="search-space file or shipped name (model/spaces)")
    p.add_argument("--data", type=data_dir,
                   help="COCO tree with train2017/ and annotations/ (default: bundled data/coco-mini)")
    p.add_argument("--epochs", type=positive_int, help=f"total epochs (demo {DEMO['epochs']}, --full {FULL['epochs']})")
    p.add_argument("--warmup-epochs", type=nonneg_int, help="epochs of weight steps only before alpha is searched")
    p.add_argument("--input", type=hxw_type(16),
                   help="HxW the supernet trains at (demo 128x96; the LUT is always at the space's size)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lam", type=nonneg_float, help="fixed lambda of the cost term: the paper's Eq. 6 as written, no "
                   "target (0 = accuracy only); default: lambda is steered to a target (see --target-ms)")
    p.add_argument("--tau", type=float_range(1.0, lo_open=True), default=math.e,
                   help="base of the log in lambda * log_tau(cost) (Eq. 7)")
    p.add_argument("--paths", choices=("sample", "all"), default="sample", help="sample: one candidate per layer "
                   "per step (GDAS straight-through Gumbel); all: the weighted sum over every candidate (Eq. 3)")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="p = softmax(alpha / T): T at the first alpha step")
    p.add_argument("--temperature-end", type=positive_float, help="T at the last alpha step, annealed geometrically "
                   f"(demo {DEMO['temperature_end']}; = --temperature for no annealing)")
    p.add_argument("--target-ms", type=positive_float, help="target latency on the device (calibrated when the LUT "
                   "has a calibration); default without --lam: the --target-ref arch's latency on the same LUT")
    p.add_argument("--target-ref", default="efficientpose_a", help="reference arch (with the space's head) of the "
                   "default target and of x-ratios in --targets")
    p.add_argument("--ref-ms", type=positive_float, help="the --target-ref arch's measured whole-network latency on "
                   "the LUT's device: calibrates the LUT by this one point (scale = ms / its LUT sum), overriding the "
                   "header's calibration (the closed loop passes it)")
    p.add_argument("--targets", help="several targets, e.g. 0.5x,1x,20 (x: times the reference's latency; else "
                   "ms): one derived arch per target from the same supernet, plus family.png")
    p.add_argument("--lam-rate", type=positive_float, default=0.1, help="integral gain of lambda towards the target "
                   "(per alpha step, in units of the running heatmap loss)")
    p.add_argument("--lam-p", type=nonneg_float, default=0.0,
                   help="proportional gain of lambda towards the target (PI)")
    p.add_argument("--w-optim", choices=("adam", "sgd"), default="adam")
    p.add_argument("--w-lr", type=positive_float, default=1e-3)
    p.add_argument("--alpha-lr", type=positive_float, help="Adam lr of alpha (demo 0.3: ~200 alpha steps; --full 1e-3)")
    p.add_argument("--drop-path", type=float_range(0.0, 1.0, hi_open=True), default=0.5,
                   help="probability of dropping a candidate in a w step")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--limit", type=positive_int, help="use only the first N persons of the data (quick runs)")
    p.add_argument("--threads", type=nonneg_int, help="torch CPU threads (demo 1: on a busy 2-core machine OpenMP "
                   "spinning makes 2 threads many times slower; 0 = torch's default)")
    p.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader workers")
    p.add_argument("--full", action="store_true", help="the full config: " + ", ".join(f"{k} {v}" for k, v in
                                                                                      FULL.items()))
    p.add_argument("--no-step-times", action="store_true", help="skip the search-step vs train-step timing")
    p.add_argument("--allow-foreign-lut", action="store_true",
                   help="use a host LUT measured on another machine (its device fingerprint differs; default: refuse)")


def build_config(a, out: str | None = None):
    from .cost import device_name
    from .loop import Config

    if a.allow_foreign_lut:  # read by model.latency.load_lut wherever this run loads the LUT
        from model.latency import ALLOW_FOREIGN_ENV

        os.environ[ALLOW_FOREIGN_ENV] = "1"
    base = FULL if a.full else DEMO
    pick = lambda v, k: base[k] if v is None else v  # noqa: E731
    if not (0 <= a.drop_path < 1):
        raise UserError(f"--drop-path: must be in [0, 1), got {a.drop_path}")
    if a.tau <= 1:
        raise UserError(f"--tau: the log base must be > 1, got {a.tau}")
    if a.temperature <= 0:
        raise UserError(f"--temperature: must be > 0, got {a.temperature}")
    t_end = pick(a.temperature_end, "temperature_end")
    if t_end <= 0:
        raise UserError(f"--temperature-end: must be > 0, got {t_end}")
    epochs, warm = pick(a.epochs, "epochs"), pick(a.warmup_epochs, "warmup_epochs")
    if epochs < 1 or warm < 0:
        raise UserError(f"--epochs {epochs} / --warmup-epochs {warm}: need epochs >= 1 and warm-up >= 0")
    targets = None
    if getattr(a, "targets", None):
        from .family import parse_targets

        targets = parse_targets(a.targets)
    return Config(
        device=a.device, space=a.space, data=a.data, epochs=epochs, warmup_epochs=warm,
        input_size=parse_hw(pick(a.input, "input")), batch_size=pick(a.batch_size, "batch_size"),
        lam=0.0 if a.lam is None else a.lam, tau=a.tau, temperature=a.temperature, temperature_end=t_end,
        paths=a.paths, target_ms=a.target_ms, reference=a.target_ref,
        target_from_reference=a.lam is None and a.target_ms is None, lam_rate=a.lam_rate, lam_p=a.lam_p,
        w_optim=a.w_optim, w_lr=a.w_lr, alpha_lr=pick(a.alpha_lr, "alpha_lr"), drop_path=a.drop_path, seed=a.seed,
        limit=a.limit, workers=a.workers, cache_images=not a.full,
        out=out or a.out or f"runs/search/{device_name(a.device)}", resume=a.resume, time_steps=not a.no_step_times,
        targets=targets, ref_ms=getattr(a, "ref_ms", None))


def setup_threads(a):
    import torch

    n = (FULL if a.full else DEMO)["threads"] if a.threads is None else a.threads
    if n > 0:
        torch.set_num_threads(n)


def init_distributed():
    """torchrun sets WORLD_SIZE > 1: gloo on CPU, nccl on GPU."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def run_search(cfg, quiet: bool = False):
    """Search, derive, write arch.yaml + plot + log; return (Search, Arch, step times or None)."""
    import time

    import torch.distributed as dist

    from . import derive
    from .loop import Search, config_dict
    from .plots import plot_history

    out = Path(cfg.out)
    rank = dist.get_rank() if dist.is_initialized() else 0
    log_file = out / "search.log"

    def log(msg: str):
        if rank:
            return
        from tqdm import tqdm

        if not quiet:
            tqdm.write(msg)
        out.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as f:
            f.write(msg + "\n")

    t0, c0 = time.time(), time.process_time()
    s = Search(cfg, log)
    u = s.cost.unit
    log(f"search on {s.cost.device} ({u}; {s.cost.source.get('provenance')}): space {s.space.name}, "
        f"{len(s.w_half)} + {len(s.a_half)} persons (w / alpha halves, disjoint images), config {config_dict(cfg)}")
    if s.reference:
        log(f"reference: {s.reference['name']} costs {s.reference['cost']:.2f} {u} on the same tables")
    if s.target is not None:
        src = "given (--target-ms)" if cfg.target_ms is not None else f"{s.reference['name']} on the same LUT"
        log(f"target: {s.target:.2f} {u} ({src}); lambda is steered towards it, the derived arch projected onto it")
    else:
        log(f"no target: fixed lambda {cfg.lam} (Eq. 6 as written)")
    s.run()
    if rank:
        return s, None, None
    arch = derive.derive(s)
    arch = arch.replace(meta={**arch.meta, "search": {**arch.meta["search"], "seconds": round(time.time() - t0, 1),
                                                      "cpu_seconds": round(time.process_time() - c0, 1)}})
    times = None
    if cfg.time_steps and s.reference is not None:
        times = s.step_times()
        arch = arch.replace(meta={**arch.meta, "step_times": {k: (round(v, 4) if isinstance(v, float) else v)
                                                              for k, v in times.items()}})
    path = derive.write(arch, out / "arch.yaml", s.cost)
    layers = [list(c) for c in s.space.decisions()]  # the neck choice, where offered, is the last panel
    names = [f"layer {i}" for i in range(len(s.space.layers()))] + (["neck"] if s.space.neck else [])
    plot_history(s.history, layers, out / "alpha_history.png", f"p per layer over epochs ({s.cost.device}, "
                 f"{cfg.paths} paths, T {cfg.temperature} -> {s.net.temperature:.2f})", names)
    log(derive.summary(arch, s.cost))
    for name, ms in derive.reference_costs(s.cost, s.space).items():
        log(f"  for reference, {name} on the same LUT: {ms:.2f} {u}")
    if times:
        mem = lambda v: "n/a" if v is None else f"{v:.0f} MiB"  # noqa: E731
        log(f"step cost ({cfg.paths} paths): one search step (w + alpha) {times['search_step_s']:.3f} s (cpu "
            f"{times['search_step_cpu_s']:.3f} s) vs one training step of {times['reference']} "
            f"{times['train_step_s']:.3f} s (cpu {times['train_step_cpu_s']:.3f} s) on the same batch "
            f"{tuple(times['batch'])}: {times['ratio']:.2f}x wall, {times['ratio_cpu']:.2f}x cpu; peak memory "
            f"{mem(times['search_step_peak_mb'])} vs {mem(times['train_step_peak_mb'])} ({times['memory_method']})")
    wrote = [path, out / "alpha_history.png", log_file]
    if cfg.targets:
        from .family import derive_family, plot_family

        fam = derive_family(s, cfg.targets, out)
        for item, t, a, p in fam:
            log(f"target {item} = {t:.2f} {u}: {a.meta.get('lut_latency_ms', a.meta.get(f'lut_cost_{u}')):.2f} {u}, "
                f"{a.meta['gflops']:.3f} GFLOPs, supernet val loss {a.meta['supernet_val_loss']:.6f} -> {p}")
        wrote.append(plot_family(s, fam, out / "family.png"))
    log(f"convergence {arch.meta['convergence']:.2f} (layers with top p >= 0.5); search took "
        f"{arch.meta['search']['seconds']:.0f} s wall, {arch.meta['search']['cpu_seconds']:.0f} s cpu")
    log("wrote " + ", ".join(str(w) for w in wrote))
    return s, arch, times


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m search", description=__doc__.split("\n\n")[0] + " Writes "
                       "runs/search/<device>/arch.yaml, alpha_history.png, history.json, search.log and "
                       "state.pt (resume with --resume). The closed loop: `python -m demo closed-loop`.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_search_args(p)
    p.add_argument("--out", type=output_dir_text, help="output folder (default runs/search/<device>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/state.pt (after a kill)")
    return p


@main_guard
def main(argv=None):
    a = build_parser().parse_args(argv)
    setup_threads(a)
    init_distributed()
    cfg = build_config(a)
    run_search(cfg)
    return 0

