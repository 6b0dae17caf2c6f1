"""python -m train --arch <arch file | shipped name> [--data COCO_DIR] [--epochs N] [--input HxW] [--resume] ...

Two presets. `quick` (the default on the bundled data/coco-mini): 128x96 input, 30 epochs, no flip test: a few
minutes on 2 CPU cores, to see the whole pipeline run (AP on 4 val images after 30 images of training is near 0).
`full` (the default when --data is another COCO tree; or --preset full): the arch's input size, 210 epochs, Adam
1e-3 with x0.1 steps at epochs 170 and 200, batch 32, flip test (SimpleBaseline / EfficientPose recipe).
Explicit flags override the preset. Multi-GPU / multi-node: `torchrun --nproc_per_node N -m train ...`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from posekit.cli import (
    ArgumentParser,
    existing_dir,
    existing_file,
    float_range,
    fraction,
    hxw,
    main_guard,
    nonneg_float,
    nonneg_int,
    output_dir,
    output_file,
    positive_float,
    positive_int,
    seed_int,
    torch_device,
)
from posekit.errors import UserError
from posekit.keypoints import DEFAULT_COCO, DEFAULT_MPII

PRESETS = {
    "quick": {"input": [128, 96], "epochs": 30, "batch_size": 16, "lr": 2e-3, "schedule": "cosine",
              "warmup_epochs": 1, "workers": 0, "flip_test": False},
    "full": {"input": None, "epochs": 210, "batch_size": 32, "lr": 1e-3, "schedule": "step",
             "warmup_epochs": 0, "workers": 4, "flip_test": True},
}


def boxes_arg(s: str) -> str:
    """--boxes: gt, or a detection results json that exists."""
    return s if s == "gt" else str(existing_file(s))


boxes_arg.bad = existing_file.bad


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="efficientpose_a", help="arch file (yaml/json) or shipped name")
    p.add_argument("--data", default=None, type=existing_dir,
                   help=f"COCO tree (train2017/, val2017/, annotations/); default {DEFAULT_COCO}")
    p.add_argument("--preset", choices=sorted(PRESETS), help="quick (bundled-data default) or full (paper recipe)")
    p.add_argument("--epochs", type=positive_int, help="total epochs; with --resume, more than the run has "
                   "done extends it")
    p.add_argument("--input", type=hxw, help="HxW network input (default: preset; full: the arch's)")
    p.add_argument("--batch-size", type=positive_int, help="per process")
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--optimizer", choices=["adam", "adamw"], default="adam")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0)
    p.add_argument("--schedule", choices=["cosine", "step"])
    p.add_argument("--steps", type=positive_float, nargs="+", default=[170 / 210, 200 / 210],
                   help="step schedule: x0.1 at these fractions of --epochs (default 170/210, 200/210)")
    p.add_argument("--warmup-epochs", type=nonneg_int)
    p.add_argument("--workers", type=nonneg_int, help="DataLoader worker processes")
    p.add_argument("--train-split", help="default train2017 (COCO) / train (MPII)")
    p.add_argument("--val-split",
                   help="split scored each eval: default val2017 / valid (train2017 to check an overfit)")
    p.add_argument("--boxes", default="gt", type=boxes_arg,
                   help="COCO eval person boxes: gt or a detection results json")
    p.add_argument("--headboxes", type=existing_file,
                   help="MPII head boxes for PCKh@0.5: gt_valid.mat or a json of [x1, y1, x2, y2]")
    p.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="scale/rotation/flip/half-body augmentation (default on)")
    p.add_argument("--scale-factor", type=float_range(0.0, 1.0, hi_open=True), default=0.35,
                   help="augmentation: random scale 1 +- this")
    p.add_argument("--rot-factor", type=float_range(0.0, 180.0), default=45.0,
                   help="augmentation: rotation sigma in degrees (p=0.6)")
    p.add_argument("--half-body", type=fraction, default=0.3, help="augmentation: half-body crop probability")
    p.add_argument("--sigma", type=positive_float,
                   help="target Gaussian sigma in heatmap pixels (default: 2 at 64x48 heatmaps, "
                        "scaled with the heatmap height, as SimpleBaseline/HRNet do)")
    p.add_argument("--eval-every", type=positive_int, default=1, help="epochs between evaluations (the last always)")
    p.add_argument("--limit", type=positive_int, help="use only the first N training persons (smoke tests)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="keep decoded images in memory (default: on for trees of <= 2000 images)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="auto", type=torch_device,
                   help="auto | cpu | cuda[:N] | mps (one this machine has)")
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads per process (default: torch's; 1 on a busy host)")
    p.add_argument("--out", type=output_dir, help="run folder (default runs/train/<arch name>, numbered if taken)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt (more --epochs extends it; an option that "
                        "would change the run is refused)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs, CI)")
    p.add_argument("--eval", type=existing_file, metavar="CKPT",
                   help="only evaluate this checkpoint on --val-split (flip test on) and write --results")
    p.add_argument("--results", type=output_file, help="--eval: predictions json (default <ckpt>.<split>.results.json)")
    return p


def given_options(p: argparse.ArgumentParser, argv) -> set[str]:
    """The dests the command line set explicitly (a resumed run compares them with the run's own)."""
    saved = [(act, act.default) for act in p._actions]
    try:
        for act, _ in saved:
            act.default = argparse.SUPPRESS
        return set(vars(p.parse_args(argv)))
    finally:
        for act, d in saved:
            act.default = d


# what a resumed run takes from the command line; every other option must match the run's own or is refused
RESUME_FREE = {"epochs", "eval_every", "workers", "device", "cache", "val_split", "boxes", "headboxes", "flip_test",
               "no_progress", "threads", "out", "resume", "results"}
AUG_KEYS = {"scale_factor": "scale_factor", "rot_factor": "rot_factor", "half_body": "half_body_prob"}


def resume_config(a: argparse.Namespace) -> dict:
    """--resume: the run's saved config, with the options a resumed run can honour (more --epochs extends it,
    evaluation and runtime options) and a one-line refusal naming any other option that differs from the run's."""
    from model import from_dict, load
    from model.checkpoint import read_checkpoint
    from train.loop import with_input

    out = a.out or Path("runs/train") / load(a.arch).name
    last = out / "last.pt"
    if not last.is_file():
        raise UserError(f"{last}: nothing to resume (no last.pt in {out}); run without --resume to start it")
    ck = read_checkpoint(last)
    saved, done, given = ck.get("config"), int(ck.get("epoch", 0)), getattr(a, "given", set())
    if not isinstance(saved, dict):
        raise UserError(f"{last}: config: missing (not a checkpoint written by python -m train)")
    need = set(PRESETS["quick"]) | {"preset", "dataset", "data", "arch", "train_split", "val_split", "optimizer",
                                    "weight_decay", "steps", "seed", "augment", "aug", "boxes", "eval_every"}
    miss = sorted(need - set(saved))
    if miss:
        raise UserError(f"{last}: config: {', '.join(miss)} missing (not a checkpoint written by python -m train)")
    size = list(from_dict(ck["arch"], src=f"{last}: arch").input_size)

    def refuse(opt, value, theirs):
        raise UserError(f"--{opt.replace('_', '-')} {value}: the run in {out} was trained with {theirs}; a resumed "
                        "run cannot change it (start a new run with another --out)")

    if "arch" in given and with_input(load(a.arch), size).to_dict() != ck["arch"]:
        refuse("arch", a.arch, f"{saved.get('arch')} (its arch.yaml differs)")
    if "input" in given and list(a.input) != size:
        refuse("input", "x".join(map(str, a.input)), "x".join(map(str, size)))
    for dest in sorted(given - RESUME_FREE - {"arch", "input"}):
        mine = getattr(a, dest)
        theirs = saved.get("aug", {}).get(AUG_KEYS[dest]) if dest in AUG_KEYS else saved.get(dest)
        if dest == "data":
            same = Path(mine).resolve() == Path(theirs).resolve()
        elif isinstance(mine, (list, tuple)):
            same = list(mine) == list(theirs or [])
        else:
            same = mine == theirs
        if not same:
            refuse(dest, mine, theirs)
    cfg = dict(saved)
    for dest in ("eval_every", "workers", "device", "val_split", "boxes", "headboxes", "flip_test"):
        if dest in given:
            cfg[dest] = str(a.boxes) if dest == "boxes" else getattr(a, dest)
    if a.cache is not None:
        cfg["cache"] = a.cache
    cfg.update(out=str(out), resume=True, progress=not a.no_progress)
    if "epochs" in given:
        if a.epochs < done:
            raise UserError(f"--epochs {a.epochs}: the run in {out} has already trained {done} epochs (a resumed run "
                            "can only extend it)")
        cfg["epochs"] = a.epochs
    if done >= cfg["epochs"]:
        raise UserError(f"{last}: the run has finished its {cfg['epochs']} epochs: nothing to resume (--epochs N, "
                        f"N > {cfg['epochs']}, extends it)")
    return cfg


def config(a: argparse.Namespace) -> dict:
    from model import load

    if a.resume and not a.eval:
        return resume_config(a)

    data = Path(a.data) if a.data else DEFAULT_COCO
    kind = "mpii" if (data / "annot").is_dir() else "coco"
    if kind == "coco" and not (data / "annotations").is_dir():
        raise UserError(f"{data}: not a COCO tree (annotations/person_keypoints_<split>.json, <split>/) nor an MPII "
                        "one (annot/<split>.json, images/)")
    a.train_split = a.train_split or {"coco": "train2017", "mpii": "train"}[kind]
    a.val_split = a.val_split or {"coco": "val2017", "mpii": "valid"}[kind]
    splits = [("--val-split", a.val_split)] + ([] if a.eval else [("--train-split", a.train_split)])
    for opt, split in splits:
        f = (data / "annotations" / f"person_keypoints_{split}.json" if kind == "coco"
             else data / "annot" / f"{split}.json")
        if not f.is_file():  # found now, not after the first epoch
            raise UserError(f"{opt} {split}: no {f}")
    if kind == "coco" and not a.eval:
        from posekit.data import load_coco

        load_coco(data / "annotations" / f"person_keypoints_{a.val_split}.json", evaluation=True)  # checked now
    bundled = data.resolve() in (DEFAULT_COCO.resolve(), DEFAULT_MPII.resolve())
    preset = a.preset or ("quick" if bundled else "full")
    cfg = dict(PRESETS[preset])
    for k in cfg:
        v = getattr(a, k)
        if v is not None:
            cfg[k] = list(v) if k == "input" else v
    out = a.out
    if out is None:
        name = load(a.arch).name
        out = Path("runs/train") / name
        i = 2
        while (out / "last.pt").exists() and not a.resume:
            out, i = Path("runs/train") / f"{name}{i}", i + 1
    from train.loop import check_out

    check_out(out, a.resume)
    if a.eval:
        a.cache = False
    elif a.cache is None and kind == "coco":
        from posekit.data import load_coco

        a.cache = len(load_coco(data / "annotations" / f"person_keypoints_{a.train_split}.json").imgs) <= 2000
    elif a.cache is None:
        from posekit.data import read_json

        a.cache = len(read_json(data / "annot" / f"{a.train_split}.json")) <= 2000
    cfg.update(preset=preset, dataset=kind, headboxes=a.headboxes, arch=str(a.arch), data=str(data), out=str(out),
               sigma=a.sigma, optimizer=a.optimizer, weight_decay=a.weight_decay, steps=a.steps,
               train_split=a.train_split, val_split=a.val_split, boxes=str(a.boxes), augment=a.augment,
               aug={"scale_factor": a.scale_factor, "rot_factor": a.rot_factor, "half_body_prob": a.half_body},
               eval_every=max(1, a.eval_every),
               limit=a.limit, cache=a.cache, sync_bn=a.sync_bn, seed=a.seed, device=a.device, resume=a.resume,
               progress=not a.no_progress)
    if cfg["epochs"] < 1:
        raise UserError(f"--epochs: must be >= 1, got {cfg['epochs']}")
    if cfg["sigma"] is not None and not cfg["sigma"] > 0:
        raise UserError(f"--sigma: must be > 0, got {cfg['sigma']}")
    return cfg


def evaluate_checkpoint(a) -> int:
    """--eval CKPT: score a checkpoint (flip test unless --no-flip-test), write the predictions json."""
    import json

    import torch

    from model.checkpoint import load_checkpoint
    from posekit.io import atomic_write_json
    from posekit.training import evaluate

    net, arch, _ = load_checkpoint(a.eval)
    a.arch, a.out, a.resume = str(a.eval), a.eval.parent, True  # no run folder is made
    cfg = config(a)
    cfg.update(flip_test=a.flip_test is not False, input=list(arch.input_size))
    if cfg["dataset"] == "mpii" and not cfg["headboxes"]:
        from posekit.evaluate import pckh

        pckh(None, None, None, None)  # the clear "PCKh needs the MPII head boxes" error

    @torch.no_grad()
    def predict(x):
        return net(torch.from_numpy(x)).numpy()

    stats = evaluate(predict, cfg, arch, return_predictions=True)
    preds = stats.pop("predictions", [])
    res = a.results or a.eval.with_name(f"{a.eval.stem}.{cfg['val_split']}.results.json")
    atomic_write_json(res, preds, indent=None)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}))
    print(f"predictions: {res}")
    return 0


@main_guard
def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    a.given = given_options(p, argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.eval:
        return evaluate_checkpoint(a)
    cfg = config(a)
    from train.loop import Trainer

    if int(os.environ.get("RANK", "0")) == 0:
        size = "x".join(map(str, cfg["input"])) if cfg["input"] else "the arch's input size"
        print(f"train: preset {cfg['preset']} ({size}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
              f"lr {cfg['lr']}) on {cfg['data']} -> {cfg['out']}"
              + ("  [quick: a few minutes on 2 CPU cores; --preset full or --data DIR for the paper recipe]"
                 if cfg["preset"] == "quick" else ""))
    out = Trainer(cfg).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        fusion = ", fusion_weights.json (what the BiFPN's fusions learned)" if (out / "fusion_weights.json").is_file() \
            else ""
        print(f"done: {out}/best.pt, last.pt, metrics.jsonl, curves.png, arch.yaml{fusion}")
    return 0
