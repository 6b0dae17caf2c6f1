"""The pieces of a training loop that train (train/loop.py) and quantization-aware training (quantize/qat_train.py)
share: the LR schedule, RNG state for exact resumes, one process's epoch batches (DDP-aware), and the scoring of a
predict function on a config's val split."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from posekit.evaluate import evaluate_model, evaluate_mpii


def lr_factor(cfg: dict):
    """Per-epoch LR multiplier: linear warmup, then cosine to 1% or x0.1 steps at the `steps` fractions."""
    epochs, warm = cfg["epochs"], cfg["warmup_epochs"]

    def f(epoch):
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        if cfg["schedule"] == "cosine":
            t = (epoch - warm) / max(1, epochs - warm)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
        return 0.1 ** sum(epoch >= round(s * epochs) for s in cfg["steps"])

    return f


def rng_state() -> dict:
    st = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(st[1].astype(np.int64)), "numpy_pos": int(st[2]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), None))
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class EpochBatches:
    """One process's training batches: a DistributedSampler under torchrun, else a RandomSampler on its own
    generator. An epoch's order and augmentation depend on (seed, epoch) only, so a run resumed after a kill sees
    the batches an uninterrupted run would (train and QAT both rely on it)."""

    def __init__(self, ds, cfg: dict, world: int, rank: int, device):
        self.seed, self.world = cfg["seed"], world
        if world > 1:
            self.sampler = DistributedSampler(ds, world, rank, shuffle=True, seed=cfg["seed"])
        else:
            self.gen = torch.Generator()
            self.sampler = RandomSampler(ds, generator=self.gen)
        w = cfg["workers"]
        self.loader = DataLoader(ds, cfg["batch_size"], sampler=self.sampler, num_workers=w,
                                 pin_memory=device.type == "cuda", persistent_workers=w > 0, collate_fn=_collate)

    def epoch(self, epoch: int) -> DataLoader:
        torch.manual_seed(self.seed + epoch)  # the augmentation's random draws
        if self.world > 1:
            self.sampler.set_epoch(epoch)
        else:
            self.gen.manual_seed(self.seed + epoch)
        return self.loader


def evaluate(predict, cfg: dict, arch, return_predictions: bool = False) -> dict:
    """Score predict_fn on the config's val split: COCO OKS AP, or MPII PCKh@0.5 when head boxes are given."""
    if cfg.get("dataset") == "mpii":
        if not cfg.get("headboxes"):
            return {}
        s = evaluate_mpii(predict, cfg["data"], cfg["val_split"], arch.input_size, cfg["headboxes"],
                          flip=cfg["flip_test"], batch_size=cfg["batch_size"], return_predictions=return_predictions)
        return s
    s = evaluate_model(predict, cfg["data"], cfg["val_split"], arch.input_size, cfg["boxes"], flip=cfg["flip_test"],
                       batch_size=cfg["batch_size"], num_joints=arch.num_joints, workers=cfg["workers"],
                       progress=cfg.get("progress", True), return_predictions=return_predictions)
    keep = ("AP", "AP50", "AP75", "APm", "APl", "AR") + (("predictions",) if return_predictions else ())
    return {k: s[k] for k in keep}


def _collate(items):
    """Stack image / heatmaps / weights only (the trainer needs no meta)."""
    return tuple(torch.stack([it[k] for it in items]) for k in ("image", "heatmaps", "weights"))
