"""python -m search --device pixel|note10|host|host-int8|flops|<lut.json>: differentiable NAS steered by a LUT.

python -m search closed-loop ...: host-int8 target check on the real TFLite runtime (see search/closed_loop.py).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from posekit.cli import (
    ArgumentParser,
    data_dir,
    float_range,
    hxw_type,
    lut_device,
    main_guard,
    nonneg_float,
    nonneg_int,
    parse_hxw,
    positive_float,
    positive_int,
    seed_int,
)
from posekit.errors import UserError

DEMO = {"epochs": 10, "warmup_epochs": 2, "input": "128x96", "batch_size": 8, "threads": 1, "alpha_lr": 0.1}
# --full: the nominal input (the LUT's) and a long schedule on the whole training set.
FULL = {"epochs": 100, "warmup_epochs": 20, "input": "256x192", "batch_size": 32, "threads": 0, "alpha_lr": 1e-3}


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
    p.add_argument("--lam", type=nonneg_float, default=0.005, help="lambda of the cost term (Eq. 7); 0 = accuracy only")
    p.add_argument("--tau", type=float_range(1.0, lo_open=True), default=math.e,
                   help="base of the log in lambda * log_tau(cost) (Eq. 7)")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="p = softmax(alpha / temperature)")
    p.add_argument("--target-ms", type=positive_float,
                   help="target latency on the device (calibrated when the LUT has a "
                        "calibration): lambda is adjusted during the search so the derived arch lands near it")
    p.add_argument("--lam-rate", type=positive_float, default=0.05,
                   help="step of the lambda update towards --target-ms")
    p.add_argument("--w-optim", choices=("adam", "sgd"), default="adam")
    p.add_argument("--w-lr", type=positive_float, default=1e-3)
    p.add_argument("--alpha-lr", type=positive_float, help="Adam lr of alpha (demo 0.1: few steps; --full 1e-3)")
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
    epochs, warm = pick(a.epochs, "epochs"), pick(a.warmup_epochs, "warmup_epochs")
    if epochs < 1 or warm < 0:
        raise UserError(f"--epochs {epochs} / --warmup-epochs {warm}: need epochs >= 1 and warm-up >= 0")
    return Config(
        device=a.device, space=a.space, data=a.data, epochs=epochs, warmup_epochs=warm,
        input_size=parse_hw(pick(a.input, "input")), batch_size=pick(a.batch_size, "batch_size"), lam=a.lam,
        tau=a.tau, temperature=a.temperature, target_ms=a.target_ms, lam_rate=a.lam_rate, w_optim=a.w_optim,
        w_lr=a.w_lr, alpha_lr=pick(a.alpha_lr, "alpha_lr"), drop_path=a.drop_path, seed=a.seed, limit=a.limit,
        workers=a.workers, cache_images=not a.full, out=out or a.out or f"runs/search/{device_name(a.device)}",
        resume=a.resume, time_steps=not a.no_step_times)


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

    s = Search(cfg, log)
    log(f"search on {s.cost.device} ({s.cost.unit}; {s.cost.source.get('provenance')}): space {s.space.name}, "
        f"{len(s.w_half)} + {len(s.a_half)} persons (w / alpha halves, disjoint images), config {config_dict(cfg)}")
    s.run()
    if rank:
        return s, None, None
    arch = derive.derive(s)
    times = None
    if cfg.time_steps:
        times = s.step_times(arch)
        arch = arch.replace(meta={**arch.meta, "step_times_s": {k: (round(v, 4) if isinstance(v, float) else v)
                                                                for k, v in times.items()}})
    path = derive.write(arch, out / "arch.yaml", s.cost)
    layers = [x.candidates for x in s.space.layers()]
    plot_history(s.history, layers, out / "alpha_history.png", f"p per layer over epochs ({s.cost.device})")
    log(derive.summary(arch, s.cost))
    for name, ms in derive.reference_costs(s.cost).items():
        log(f"  for reference, {name} on the same LUT: {ms:.2f} {s.cost.unit}")
    if times:
        log(f"one search step (w + alpha) {times['search_step_s']:.3f} s vs one training step of the derived net "
            f"{times['train_step_s']:.3f} s on the same batch {tuple(times['batch'])} ({times['ratio']:.1f}x)")
    log(f"wrote {path}, {out / 'alpha_history.png'}, {log_file}")
    return s, arch, times


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m search", description=__doc__.split("\n\n")[0] + " Writes "
                       "runs/search/<device>/arch.yaml, alpha_history.png, history.json, search.log and "
                       "state.pt (resume with --resume). Subcommand: closed-loop (see `python -m search "
                       "closed-loop --help`).", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_search_args(p)
    p.add_argument("--out", help="output folder (default runs/search/<device>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/state.pt (after a kill)")
    return p


@main_guard
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "closed-loop":
        from .closed_loop import main as closed_loop

        return closed_loop(argv[1:])
    a = build_parser().parse_args(argv)
    setup_threads(a)
    init_distributed()
    cfg = build_config(a)
    run_search(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
