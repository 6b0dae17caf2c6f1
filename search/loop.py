"""The search loop: warm-up on w, then alternating w steps (half A) and alpha steps (half B), checkpointed each epoch.

Loss (Eq. 6-7): heatmap MSE with target weights + lambda * log_tau(expected cost), the expected cost being the
probability-weighted LUT latency of every layer plus the fixed stem/head (Eq. 4-5). With a target latency, lambda
is a dual variable: after every alpha step it moves by `lam_rate * ln(expected / target)`, so it grows while the
expected latency is above the target and falls (below zero if needed) while it is below; the derive step then
takes the most probable arch whose LUT latency is closest to the target (derive.py).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from model.space import load_space
from posekit.errors import UserError
from posekit.heatmap import joints_mse as heatmap_loss
from posekit.io import atomic_path, atomic_write_json

from .cost import CostModel, load_cost, log_tau
from .data import loader, search_halves
from .supernet import SuperNet

STATE = "state.pt"


@dataclass
class Config:
    device: str
    space: str = "default"
    data: str | None = None
    epochs: int = 10
    warmup_epochs: int = 2
    input_size: tuple[int, int] = (128, 96)
    batch_size: int = 8
    lam: float = 0.005
    tau: float = math.e
    temperature: float = 1.0
    target_ms: float | None = None
    lam_rate: float = 0.05
    w_optim: str = "adam"
    w_lr: float = 1e-3
    alpha_lr: float = 0.1
    drop_path: float = 0.5
    seed: int = 0
    limit: int | None = None
    workers: int = 0
    cache_images: bool = True
    out: str = "runs/search/pixel"
    resume: bool = False
    time_steps: bool = True
    calibration: dict | None = None  # LUT sum -> whole-network ms, overriding the LUT header's

    def key(self) -> dict:
        """What a resumed run must share with the run it continues."""
        return {k: getattr(self, k) for k in ("device", "space", "data", "input_size", "batch_size", "seed", "limit",
                                              "drop_path", "w_optim", "temperature")}


class Search:
    def __init__(self, cfg: Config, log=print):
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.out)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
        if cfg.resume and not (self.out / STATE).is_file():
            raise UserError(f"{self.out / STATE}: nothing to resume (run without --resume first)")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.space = load_space(cfg.space)
        self.cost: CostModel = load_cost(cfg.device, self.space)
        if cfg.calibration:
            self.cost.calibration = cfg.calibration
        if cfg.target_ms is not None and self.cost.unit != "ms":
            raise UserError(f"--target-ms needs a latency LUT, not --device {cfg.device} ({self.cost.unit})")
        if cfg.target_ms is not None and cfg.target_ms <= 0:
            raise UserError(f"--target-ms: must be > 0, got {cfg.target_ms}")
        self.net = SuperNet(self.space, cfg.temperature).to(self.dev)
        self.tables = [t.to(self.dev) for t in self.cost.tables]
        opt = {"adam": lambda p: torch.optim.Adam(p, cfg.w_lr),
               "sgd": lambda p: torch.optim.SGD(p, cfg.w_lr, momentum=0.9, weight_decay=4e-5)}[cfg.w_optim]
        self.w_opt = opt(self.net.weights())
        # Adam for alpha as in DARTS (beta1 0.5, weight decay 1e-3).
        self.a_opt = torch.optim.Adam(list(self.net.alphas), cfg.alpha_lr, betas=(0.5, 0.999), weight_decay=1e-3)
        self.drop_gen = torch.Generator().manual_seed(cfg.seed + 1)  # same on every rank: same paths dropped
        self.epoch, self.lam, self.history = 0, cfg.lam, []
        self.w_half, self.a_half = search_halves(cfg.data or _default_data(), cfg.input_size, self.space.num_joints,
                                                 cfg.limit, cfg.cache_images)

    # ---- state -----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"config": self.cfg.key(), "epoch": self.epoch, "lam": self.lam, "history": self.history,
                "net": self.net.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "drop": self.drop_gen.get_state(),
                        "numpy": np.random.get_state(), "python": random.getstate()}}

    def save(self):
        if self.rank:
            return
        with atomic_path(self.out / STATE) as tmp:
            torch.save(self.state(), tmp)
        atomic_write_json(self.out / "history.json", {"layers": [x.candidates for x in self.space.layers()],
                                                       "epochs": self.history})

    def load(self):
        p = self.out / STATE
        if not p.is_file():
            raise UserError(f"{p}: nothing to resume (run without --resume first)")
        try:
            s = torch.load(p, map_location=self.dev, weights_only=False)
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"{p}: unreadable search state ({type(e).__name__}: {e})") from None
        if s.get("config") != self.cfg.key():
            diff = {k: (v, s.get("config", {}).get(k)) for k, v in self.cfg.key().items()
                    if s.get("config", {}).get(k) != v}
            raise UserError(f"{p}: was saved by a different search ({diff} now vs then); use another --out")
        self.net.load_state_dict(s["net"])
        self.w_opt.load_state_dict(s["w_opt"])
        self.a_opt.load_state_dict(s["a_opt"])
        self.epoch, self.lam, self.history = s["epoch"], s["lam"], s["history"]
        torch.set_rng_state(s["rng"]["torch"])
        self.drop_gen.set_state(s["rng"]["drop"])
        np.random.set_state(s["rng"]["numpy"])
        random.setstate(s["rng"]["python"])

    # ---- steps -----------------------------------------------------------------------------------------------
    def expected(self) -> torch.Tensor:
        return sum((p * t).sum() for p, t in zip(self.net.probs(), self.tables)) + self.cost.fixed

    @torch.no_grad()
    def expected_value(self) -> float:
        return float(self.expected())

    def derived_cost(self) -> float:
        return self.cost.of(self.space, self.net.choices())

    def _batch(self, b):
        return b["image"].to(self.dev), b["heatmaps"].to(self.dev), b["weights"].to(self.dev)

    def w_step(self, batch) -> float:
        x, y, w = self._batch(batch)
        with torch.no_grad():
            probs = self.net.probs()
        keep = self.net.sample_keep(self.cfg.drop_path, self.drop_gen)
        loss = heatmap_loss(self.net(x, keep=keep, probs=probs), y, w)
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._allreduce(self.net.weights())
        self.w_opt.step()
        return loss.item()

    def a_step(self, batch) -> tuple[float, float]:
        x, y, w = self._batch(batch)
        mse = heatmap_loss(self.net(x), y, w)
        cost = self.expected()
        loss = mse + self.lam * log_tau(cost, self.cfg.tau)
        alphas = list(self.net.alphas)
        # autograd.grad: only alpha's gradient, no weight gradients computed (a third less work than backward()).
        grads = torch.autograd.grad(loss, alphas)
        for a, g in zip(alphas, grads):
            a.grad = g
        self._allreduce(alphas)
        self.a_opt.step()
        if self.cfg.target_ms is not None:  # dual ascent on lambda, on the (smooth) expected latency
            ms = self.cost.calibrated(cost.item())
            self.lam += self.cfg.lam_rate * math.log(ms / self.cfg.target_ms)
        return mse.item(), cost.item()

    def _allreduce(self, params):
        """Data parallel (torchrun): average the gradients over the ranks, as DistributedDataParallel does."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= self.world

    # ---- epochs ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        if cfg.resume:
            self.load()
            self.log(f"resumed from {self.out / STATE} after epoch {self.epoch}")
        bar = tqdm(range(self.epoch, cfg.epochs), desc="search", unit="epoch", disable=self.rank > 0,
                   initial=self.epoch, total=cfg.epochs)
        for epoch in bar:
            t0 = time.time()
            self.net.train()
            search_alpha = epoch >= cfg.warmup_epochs
            wl = loader(self.w_half, cfg.batch_size, cfg.seed, epoch, cfg.workers, self.rank, self.world)
            al = loader(self.a_half, cfg.batch_size, cfg.seed + 7, epoch, cfg.workers, self.rank, self.world)
            w_losses, a_losses, costs = [], [], []
            for wb, ab in zip(wl, al if search_alpha else [None] * len(wl)):
                w_losses.append(self.w_step(wb))
                if search_alpha:
                    mse, c = self.a_step(ab)
                    a_losses.append(mse)
                    costs.append(c)
            self.epoch = epoch + 1
            self._sync_buffers()
            rec = {"epoch": self.epoch, "phase": "search" if search_alpha else "warmup",
                   "w_loss": _mean(w_losses), "a_loss": _mean(a_losses), "lam": self.lam,
                   "expected_cost": self.expected_value(), "derived_cost": self.derived_cost(),
                   "choices": self.net.choices(), "seconds": round(time.time() - t0, 2),
                   "probs": [[round(v, 5) for v in p.tolist()] for p in self.net.probs()]}
            self.history.append(rec)
            self.save()
            u = self.cost.unit
            self.log(f"epoch {self.epoch}/{cfg.epochs} {rec['phase']}: w_loss {rec['w_loss']:.6f} "
                     f"a_loss {rec['a_loss']:.6f} lambda {self.lam:.4f} expected {rec['expected_cost']:.2f} {u} "
                     f"argmax arch {rec['derived_cost']:.2f} {u} ({rec['seconds']:.1f} s)")

    def _sync_buffers(self):
        if self.world > 1:  # BN running stats from rank 0, as DDP broadcasts them
            for b in self.net.buffers():
                dist.broadcast(b, 0)
            flat = torch.cat([a.detach().flatten() for a in self.net.alphas])
            ref = flat.clone()
            dist.broadcast(ref, 0)
            if not torch.allclose(flat, ref):  # averaged gradients keep the replicas identical
                raise RuntimeError(f"rank {self.rank}: alpha diverged from rank 0")

    # ---- step timing -----------------------------------------------------------------------------------------
    def step_times(self, arch, repeats: int = 3) -> dict:
        """Seconds of one search step (w step + alpha step) vs one training step of the derived net, same batch.

        Runs on copies, so the saved search state is untouched.
        """
        from model.net import build

        batch = next(iter(loader(self.w_half, self.cfg.batch_size, self.cfg.seed, 10**6)))
        me = copy.copy(self)
        me.net = copy.deepcopy(self.net)
        me.w_opt = torch.optim.Adam(me.net.weights(), self.cfg.w_lr)
        me.a_opt = torch.optim.Adam(list(me.net.alphas), self.cfg.alpha_lr)
        me.drop_gen = torch.Generator().manual_seed(0)
        me.tables, me.cfg = self.tables, copy.copy(self.cfg)
        me.cfg.target_ms = None
        derived = build(arch).to(self.dev).train()
        opt = torch.optim.Adam(derived.parameters(), self.cfg.w_lr)
        x, y, w = self._batch(batch)

        def train_step():
            loss = heatmap_loss(derived(x), y, w)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def timed(fn):
            fn()  # warm-up
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            return float(np.median(ts))

        search = timed(lambda: (me.w_step(batch), me.a_step(batch)))
        train = timed(train_step)
        return {"batch": list(x.shape), "search_step_s": search, "train_step_s": train, "ratio": search / train}


def _mean(v):
    return float(np.mean(v)) if v else float("nan")


def _default_data():
    from posekit.keypoints import DEFAULT_COCO

    return DEFAULT_COCO


def config_dict(cfg: Config) -> dict:
    d = asdict(cfg)
    d["input_size"] = list(cfg.input_size)
    return d
