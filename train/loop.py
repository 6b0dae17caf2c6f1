"""The training loop: weighted heatmap MSE (the paper's Eq. 7), Adam/AdamW, cosine or step schedule, AMP on CUDA,
an atomic checkpoint every epoch (model, optimizer, scheduler, scaler, epoch, RNG, metrics), --resume, best-by-AP,
metrics.jsonl + curves.png, DDP under torchrun (only rank 0 evaluates and writes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from model import build, dump, from_dict, load
from model.bifpn import fusion_weights
from model.checkpoint import read_checkpoint, save_checkpoint, unwrap
from posekit import dist
from posekit.data import CocoPose, MpiiPose
from posekit.errors import UserError
from posekit.heatmap import joints_mse as weighted_mse
from posekit.io import atomic_write_json, atomic_write_text
from posekit.training import EpochBatches, evaluate, lr_factor, rng_state, set_rng_state
from train.plots import plot_curves

PLOT_EVERY_S = 60.0  # curves.png is redrawn after each evaluation, and otherwise at most this often


def with_input(arch, input_size):
    if not input_size or tuple(input_size) == tuple(arch.input_size):
        return arch
    d = arch.to_dict()
    d["input_size"] = list(input_size)
    return from_dict(d, src=f"--input {input_size[0]}x{input_size[1]}")


class Trainer:
    def __init__(self, cfg: dict):
        self.rank, self.world, self.device = dist.setup(cfg.get("device"))
        self.out = Path(cfg["out"])
        self.start_epoch, self.records, self.best_ap, ckpt = 0, [], -1.0, None
        self.plotted = time.monotonic()  # curves.png: see save()
        last = self.out / "last.pt"
        if cfg.get("resume"):
            if not last.is_file():
                raise UserError(f"{last}: nothing to resume (no last.pt in {self.out})")
            ckpt = read_checkpoint(last)
            miss = [k for k in ("config", "epoch", "optimizer", "scheduler", "scaler", "rng", "metrics", "best_ap")
                    if k not in ckpt]
            if miss:
                raise UserError(f"{last}: {', '.join(miss)}: missing (not a training checkpoint of python -m train: "
                                "nothing to resume)")
            cfg = {**ckpt["config"], **cfg}  # train's resume_config already merged them; a bare cfg takes the run's
            self.start_epoch, self.records, self.best_ap = ckpt["epoch"], ckpt["metrics"], ckpt["best_ap"]
            self.arch = from_dict(ckpt["arch"], src=f"{last}: arch")
            self.log(f"resuming {last} after epoch {self.start_epoch}/{cfg['epochs']}")
        else:
            self.arch = with_input(load(cfg["arch"]), cfg.get("input"))
        self.cfg = cfg
        if metric_name(cfg) is None:
            self.log("note: PCKh needs the MPII head boxes (--headboxes gt_valid.mat or json): no val score, "
                     "best.pt follows last.pt")
        torch.manual_seed(cfg["seed"])
        dataset = MpiiPose if cfg.get("dataset") == "mpii" else CocoPose
        self.ds = dataset(cfg["data"], cfg["train_split"], self.arch.input_size, train=cfg["augment"],
                          num_joints=self.arch.num_joints, limit=cfg.get("limit"), cache_images=cfg.get("cache", False),
                          sigma=cfg.get("sigma"), **cfg.get("aug", {}))
        self.net = build(self.arch).to(self.device)
        # channels_last: oneDNN's depthwise conv (forward and backward) is ~2x faster in NHWC on CPU
        self.mem = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.net = self.net.to(memory_format=self.mem)
        if self.world > 1:
            if cfg.get("sync_bn"):
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device] if self.device.type == "cuda" else None)
        opt = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
        self.opt = opt(self.net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(cfg))
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        if ckpt is not None:
            try:
                unwrap(self.net).load_state_dict(ckpt["model"])
                self.opt.load_state_dict(ckpt["optimizer"])
            except (RuntimeError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{last}: model/optimizer: state does not fit this run: "
                                f"{str(e).strip().splitlines()[0]}") from None
            self.sched.load_state_dict(ckpt["scheduler"])
            # the LR of the next epoch under this run's schedule (more --epochs re-spread it; same epochs: same LR)
            for g, base, f in zip(self.opt.param_groups, self.sched.base_lrs, self.sched.lr_lambdas):
                g["lr"] = base * f(self.sched.last_epoch)
            self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]
            self.scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
        self.batches = EpochBatches(self.ds, cfg, self.world, self.rank, self.device)

    def log(self, msg):
        if self.rank == 0:
            tqdm.write(msg)

    def fit(self) -> Path:
        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            dump(self.arch, self.out / "arch.yaml", header=f"arch trained in this run ({cfg['arch']})")
            atomic_write_json(self.out / "config.json", cfg)
        for epoch in range(self.start_epoch, cfg["epochs"]):
            t0 = time.time()
            loss = self.train_epoch(epoch)
            rec = {"epoch": epoch + 1, "lr": self.opt.param_groups[0]["lr"], "train_loss": loss}
            self.sched.step()
            last = epoch + 1 == cfg["epochs"]
            if self.rank == 0:
                scored = (epoch + 1) % cfg["eval_every"] == 0 or last
                if scored:
                    rec.update(self.evaluate())
                rec["time_s"] = round(time.time() - t0, 2)
                self.records.append(rec)
                self.save(epoch + 1, rec, plot=scored)
                self.log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}))
            dist.barrier()
        dist.cleanup()
        return self.out

    def train_epoch(self, epoch: int) -> float:
        self.net.train()
        total, n = 0.0, 0
        bar = tqdm(self.batches.epoch(epoch), desc=f"epoch {epoch + 1}/{self.cfg['epochs']}", leave=False,
                   disable=self.rank != 0 or not self.cfg.get("progress", True))
        for images, heatmaps, weights in bar:
            images, heatmaps, weights = (t.to(self.device, non_blocking=True) for t in (images, heatmaps, weights))
            images = images.contiguous(memory_format=self.mem)
            with torch.autocast("cuda", enabled=self.amp):
                pred = self.net(images)
            loss = weighted_mse(pred.float(), heatmaps, weights)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            total, n = total + loss.item() * len(images), n + len(images)
            bar.set_postfix(loss=f"{total / n:.2e}")
        return dist.mean_across(total / max(n, 1))

    @torch.no_grad()
    def evaluate(self) -> dict:
        net, cfg = unwrap(self.net), self.cfg
        net.eval()

        def predict(x):
            with torch.autocast("cuda", enabled=self.amp):
                x = torch.from_numpy(x).to(self.device).contiguous(memory_format=self.mem)
                return net(x).float().cpu().numpy()

        stats = evaluate(predict, cfg, self.arch)
        net.train()
        return stats

    def save(self, epoch: int, rec: dict, plot: bool = True):
        state = {"epoch": epoch, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": rng_state(), "metrics": self.records,
                 "config": self.cfg}
        name = metric_name(self.cfg)
        ap = rec.get(name) if name else 0.0  # no score (MPII without head boxes): best.pt follows last.pt
        if ap is not None and ap >= self.best_ap:  # best first: a kill between the two leaves last.pt consistent
            self.best_ap = ap
            save_checkpoint(self.out / "best.pt", self.net, self.arch, best_ap=ap, **state)
            learned = fusion_weights(unwrap(self.net))
            if learned:  # a BiFPN neck: what its fusions learned, for best.pt (the demo's report shows it)
                atomic_write_json(self.out / "fusion_weights.json", {"epoch": epoch, name or "score": ap,
                                                                     "nodes": learned})
        save_checkpoint(self.out / "last.pt", self.net, self.arch, best_ap=self.best_ap, **state)
        atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
        # drawing the figure takes ~1.5 s (40% of a short epoch): after an evaluation, else once a minute at most
        if plot or time.monotonic() - self.plotted > PLOT_EVERY_S:
            plot_curves(self.records, self.out / "curves.png")
            self.plotted = time.monotonic()


def metric_name(cfg: dict) -> str | None:
    """The score best.pt is chosen by: COCO OKS AP, MPII PCKh@0.5 (None without head boxes: best = last)."""
    if cfg.get("dataset") == "mpii":
        return "PCKh" if cfg.get("headboxes") else None
    return "AP"


def check_out(out: Path, resume: bool):
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder")
    if (out / "last.pt").is_file() and not resume:
        raise UserError(f"{out}: a run is already there (last.pt): pass --resume to continue it or --out for a new "
                        "one")
