"""The search loop: warm-up on w, then alternating w steps (half A) and alpha steps (half B), checkpointed each epoch.

Loss (Eq. 6-7): heatmap MSE with target weights + lambda * log_tau(expected cost), the expected cost being the
probability-weighted LUT latency of every layer plus the fixed stem/head (Eq. 4-5), p = softmax(alpha / T).

- Paths: `sample` (default) runs one candidate per layer per step (GDAS straight-through Gumbel, supernet.py);
  `all` is the paper's weighted sum over every candidate (Eq. 3) with dropping-path on w steps.
- Temperature: T anneals geometrically from `temperature` to `temperature_end` over the alpha steps (FBNet / GDAS
  anneal theirs the same way), so p sharpens and w is trained more and more on the paths the search is choosing.
- Target: with a target latency, lambda is a PI controller on the loss's scale: after every alpha step its integral
  part moves by `lam_rate * L * ln(expected / target)`, L a running mean of the heatmap loss (~1e-3 here), so it
  grows while the expected latency is above the target and falls (below zero if needed) while it is below; the
  step itself uses lambda + `lam_p * L * ln(expected / target)` (a proportional part, 0 by default: on the demo it
  held the expected latency on the target but kept p mixed longer).
  The derive step then takes the most probable arch whose LUT latency is within 2% of the target (derive.py).
  Without a target, lambda is fixed: the paper's Eq. 6 as written.
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

from model.checkpoint import load_state_file
from model.space import load_space
from posekit.errors import UserError
from posekit.heatmap import joints_mse as heatmap_loss
from posekit.io import atomic_path, atomic_write_json

from .cost import CostModel, load_cost, log_tau, reference_arch, reference_cost
from .data import loader, search_halves
from .supernet import SuperNet

STATE = "state.pt"
DECIDED = 0.5  # a layer has decided when its top candidate has p >= this


@dataclass
class Config:
    device: str
    space: str = "default"
    data: str | None = None
    epochs: int = 10
    warmup_epochs: int = 2
    input_size: tuple[int, int] = (128, 96)
    batch_size: int = 8
    lam: float = 0.0
    tau: float = math.e
    temperature: float = 1.0
    temperature_end: float | None = None  # None: no annealing
    paths: str = "sample"  # sample | all
    target_ms: float | None = None
    reference: str | None = "efficientpose_a"  # shipped arch (with the space's head) the targets refer to
    target_from_reference: bool = False  # no target_ms: search for the reference's cost on the same LUT
    lam_rate: float = 0.1
    lam_p: float = 0.0  # proportional gain of the lambda controller (same units as lam_rate; 0 = integral only)
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
    targets: list[str] | None = None  # --targets: one derived arch per entry (ms, or "0.5x" of the reference)
    ref_ms: float | None = None  # --ref-ms: the reference measured on the LUT's device (a one-point calibration)

    def key(self) -> dict:
        """What a resumed run must share with the run it continues."""
        return {k: getattr(self, k) for k in ("device", "space", "data", "input_size", "batch_size", "seed", "limit",
                                              "drop_path", "w_optim", "temperature", "temperature_end", "paths")}


def convergence(probs: list[torch.Tensor]) -> float:
    """Fraction of layers whose top candidate has p >= 0.5: 1/7 ~ 0.14 means undecided, 1 fully decided."""
    return sum(float(p.max()) >= DECIDED for p in probs) / len(probs)


class Search:
    def __init__(self, cfg: Config, log=print):
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.out)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
        if cfg.resume and not (self.out / STATE).is_file():
            raise UserError(f"{self.out / STATE}: nothing to resume (run without --resume first)")
        if cfg.paths not in ("sample", "all"):
            raise UserError(f"--paths: sample or all, got {cfg.paths!r}")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.space = load_space(cfg.space)
        self.cost: CostModel = load_cost(cfg.device, self.space)
        if cfg.target_ms is not None and self.cost.unit != "ms":
            raise UserError(f"--target-ms needs a latency LUT, not --device {cfg.device} ({self.cost.unit})")
        if cfg.target_ms is not None and cfg.target_ms <= 0:
            raise UserError(f"--target-ms: must be > 0, got {cfg.target_ms}")
        # The target in the cost's unit (calibrated ms on a LUT with a calibration): given, or the reference's.
        self.reference = None  # {"name", "cost" (uncalibrated LUT sum / MFLOPs)}
        if cfg.reference:
            try:
                ref = reference_arch(cfg.reference, self.space)
                self.reference = {"name": ref.name, "cost": round(reference_cost(self.cost, self.space, ref), 6)}
            except (UserError, ValueError) as e:  # another space or LUT: a reference is needed only for targets
                if cfg.target_from_reference:
                    raise UserError(f"--target-ref {cfg.reference}: no cost on {cfg.device} for it ({e}); "
                                    "give --target-ms or --lam") from None
        if cfg.ref_ms is not None:
            # The LUT's parts are timed alone: map their sum onto whole-network latency by one measured point, the
            # reference (scale only, so "ratio x the measured reference" is "ratio x its LUT sum").
            if self.reference is None or self.cost.unit != "ms":
                raise UserError(f"--ref-ms needs a latency LUT and a --target-ref arch it can price (device "
                                f"{cfg.device}, reference {cfg.reference})")
            self.cost.calibration = {
                "scale": cfg.ref_ms / self.reference["cost"], "offset_ms": 0.0,
                "fitted": f"one point: {self.reference['name']} measured {cfg.ref_ms:.2f} ms / LUT sum "
                          f"{self.reference['cost']:.2f} ms"}
        self.target = cfg.target_ms
        if self.target is None and cfg.target_from_reference:
            if self.reference is None:
                raise UserError("a target from the reference arch needs --target-ref")
            self.target = self.cost.calibrated(self.reference["cost"])
        self.net = SuperNet(self.space, cfg.temperature).to(self.dev)
        self.tables = [t.to(self.dev) for t in self.cost.tables]
        opt = {"adam": lambda p: torch.optim.Adam(p, cfg.w_lr),
               "sgd": lambda p: torch.optim.SGD(p, cfg.w_lr, momentum=0.9, weight_decay=4e-5)}[cfg.w_optim]
        self.w_opt = opt(self.net.weights())
        # Adam for alpha as in DARTS (beta1 0.5, weight decay 1e-3).
        self.a_opt = torch.optim.Adam(list(self.net.alphas), cfg.alpha_lr, betas=(0.5, 0.999), weight_decay=1e-3)
        self.drop_gen = torch.Generator().manual_seed(cfg.seed + 1)  # same on every rank: same paths everywhere
        self.epoch, self.lam, self.history, self.loss_ema = 0, cfg.lam, [], None
        self.w_half, self.a_half = search_halves(cfg.data or _default_data(), cfg.input_size, self.space.num_joints,
                                                 cfg.limit, cfg.cache_images)

    # ---- state: plain tensors, numbers, strings, lists and dicts only (loaded with weights_only=True) ---------
    def state(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        return {"config": self.cfg.key(), "epoch": self.epoch, "lam": self.lam, "loss_ema": self.loss_ema,
                "history": self.history, "net": self.net.state_dict(), "w_opt": self.w_opt.state_dict(),
                "a_opt": self.a_opt.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "drop": self.drop_gen.get_state(),
                        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                                  float(gauss)],
                        "python": [version, list(internal), gauss_next]}}

    def save(self):
        if self.rank:
            return
        with atomic_path(self.out / STATE) as tmp:
            torch.save(self.state(), tmp)
        atomic_write_json(self.out / "history.json", {"layers": [list(c) for c in self.space.decisions()],
                                                       "epochs": self.history})

    def load(self):
        p = self.out / STATE
        if not p.is_file():
            raise UserError(f"{p}: nothing to resume (run without --resume first)")
        s = load_state_file(p, "search state", self.dev)  # weights_only: a state file is data, never code
        if not isinstance(s, dict) or s.get("config") != self.cfg.key():
            old = s.get("config", {}) if isinstance(s, dict) else {}
            diff = {k: (v, old.get(k)) for k, v in self.cfg.key().items() if old.get(k) != v}
            raise UserError(f"{p}: was saved by a different search ({diff} now vs then); use another --out")
        try:
            self.net.load_state_dict(s["net"])
            self.w_opt.load_state_dict(s["w_opt"])
            self.a_opt.load_state_dict(s["a_opt"])
            self.epoch, self.lam, self.history, self.loss_ema = s["epoch"], s["lam"], s["history"], s["loss_ema"]
            r = s["rng"]
            torch.set_rng_state(r["torch"])
            self.drop_gen.set_state(r["drop"])
            kind, keys, pos, has_gauss, gauss = r["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            version, internal, gauss_next = r["python"]
            random.setstate((version, tuple(internal), gauss_next))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UserError(f"{p}: incomplete search state ({type(e).__name__}: {msg})") from None

    # ---- schedule --------------------------------------------------------------------------------------------
    def set_temperature(self, step: int, total: int) -> float:
        """Geometric annealing from `temperature` to `temperature_end` over the alpha steps `0..total-1`."""
        t0, t1 = self.cfg.temperature, self.cfg.temperature_end
        f = 0.0 if t1 is None or total <= 1 else min(1.0, step / (total - 1))
        self.net.temperature = t0 * (t1 / t0) ** f if t1 is not None else t0
        return self.net.temperature

    # ---- steps -----------------------------------------------------------------------------------------------
    def expected(self) -> torch.Tensor:
        return self.cost.expected(self.net.probs(), self.tables)

    @torch.no_grad()
    def expected_value(self) -> float:
        return float(self.expected())

    def derived_cost(self) -> float:
        return self.cost.of(self.space, self.net.choices())

    def _batch(self, b):
        return b["image"].to(self.dev), b["heatmaps"].to(self.dev), b["weights"].to(self.dev)

    def w_step(self, batch) -> float:
        x, y, w = self._batch(batch)
        if self.cfg.paths == "sample":  # one path per layer drawn from p (uniform while alpha is still 0)
            out = self.net(x, paths=self.net.sample_paths(self.drop_gen))
        else:
            with torch.no_grad():
                probs = self.net.probs()
            out = self.net(x, keep=self.net.sample_keep(self.cfg.drop_path, self.drop_gen), probs=probs)
        loss = heatmap_loss(out, y, w)
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._allreduce([p for p in self.net.weights() if p.grad is not None])  # same paths on every rank
        self.w_opt.step()
        return loss.item()

    def a_step(self, batch) -> tuple[float, float]:
        x, y, w = self._batch(batch)
        if self.cfg.paths == "sample":
            paths, gates = self.net.gumbel_paths(self.drop_gen)
            mse = heatmap_loss(self.net(x, paths=paths, gates=gates), y, w)
        else:
            mse = heatmap_loss(self.net(x), y, w)
        cost = self.expected()
        m = mse.item()
        if self.world > 1:  # one loss scale and one lambda on every rank
            t = torch.tensor([m], device=self.dev)
            dist.all_reduce(t)
            m = float(t) / self.world
        scale = self.loss_ema if self.loss_ema is not None else max(m, 1e-12)
        lam = self.lam
        if self.target is not None:  # PI control: the proportional part damps the integral's oscillation
            lam += self.cfg.lam_p * scale * math.log(self.cost.calibrated(cost.item()) / self.target)
        loss = mse + lam * log_tau(cost, self.cfg.tau)
        # Adam sees the loss divided by the running heatmap loss (~1e-3): a constant factor, so the same objective
        # and direction, but gradients of DARTS' scale, where alpha's weight decay 1e-3 means what it means there
        # (on the raw ~1e-5 gradients it would pull every alpha back to 0 as hard as the data pushes).
        loss = loss / scale
        alphas = list(self.net.alphas)
        # autograd.grad: only alpha's gradient, no weight gradients computed (a third less work than backward()).
        grads = torch.autograd.grad(loss, alphas)
        for a, g in zip(alphas, grads):
            a.grad = g
        self._allreduce(alphas)
        self.a_opt.step()
        self.loss_ema = m if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * m
        if self.target is not None:  # dual ascent on lambda, on the loss's scale, on the (smooth) expected cost
            self.lam += self.cfg.lam_rate * self.loss_ema * math.log(self.cost.calibrated(cost.item()) / self.target)
        return m, cost.item()

    def _allreduce(self, params):
        """Data parallel (torchrun): average the gradients over the ranks, as DistributedDataParallel does."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= self.world

    @torch.no_grad()
    def path_loss(self, choices: list[str], batches: int | None = None) -> float:
        """Supernet validation loss of one path (the alpha half, never used for w): BN in batch-statistics mode,
        its running buffers restored afterwards, so the search state is untouched."""
        idx = self.net.indices(choices)
        saved = {k: v.clone() for k, v in self.net.named_buffers()}
        was = self.net.training
        self.net.train()
        losses = []
        try:
            for i, b in enumerate(loader(self.a_half, self.cfg.batch_size, self.cfg.seed + 13, 0)):
                if batches is not None and i >= batches:
                    break
                x, y, w = self._batch(b)
                losses.append(heatmap_loss(self.net(x, paths=idx), y, w).item())
        finally:
            for k, v in self.net.named_buffers():
                v.copy_(saved[k])
            self.net.train(was)
        return _mean(losses)

    # ---- epochs ----------------------------------------------------------------------------------------------
    def run(self, until: int | None = None) -> None:
        """Train to `cfg.epochs` (or stop after epoch `until`, as a kill right after that epoch's save would)."""
        cfg = self.cfg
        if cfg.resume:
            self.load()
            self.log(f"resumed from {self.out / STATE} after epoch {self.epoch}")
        per_epoch = len(loader(self.w_half, cfg.batch_size, cfg.seed, 0, 0, self.rank, self.world))
        total = max(0, cfg.epochs - cfg.warmup_epochs) * per_epoch
        bar = tqdm(range(self.epoch, cfg.epochs), desc="search", unit="epoch", disable=self.rank > 0,
                   initial=self.epoch, total=cfg.epochs)
        for epoch in bar:
            if until is not None and epoch >= until:
                break
            t0, c0 = time.time(), time.process_time()
            self.net.train()
            search_alpha = epoch >= cfg.warmup_epochs
            wl = loader(self.w_half, cfg.batch_size, cfg.seed, epoch, cfg.workers, self.rank, self.world)
            al = loader(self.a_half, cfg.batch_size, cfg.seed + 7, epoch, cfg.workers, self.rank, self.world)
            w_losses, a_losses, costs = [], [], []
            for i, (wb, ab) in enumerate(zip(wl, al if search_alpha else [None] * len(wl))):
                if search_alpha:
                    self.set_temperature((epoch - cfg.warmup_epochs) * per_epoch + i, total)
                w_losses.append(self.w_step(wb))
                if search_alpha:
                    mse, c = self.a_step(ab)
                    a_losses.append(mse)
                    costs.append(c)
            self.epoch = epoch + 1
            self._sync_buffers()
            with torch.no_grad():
                probs = self.net.probs()
            rec = {"epoch": self.epoch, "phase": "search" if search_alpha else "warmup",
                   "w_loss": _mean(w_losses), "a_loss": _mean(a_losses), "lam": self.lam,
                   "temperature": round(self.net.temperature, 5), "convergence": convergence(probs),
                   "expected_cost": self.expected_value(), "derived_cost": self.derived_cost(),
                   "choices": self.net.choices(), "seconds": round(time.time() - t0, 2),
                   "cpu_seconds": round(time.process_time() - c0, 2),
                   "probs": [[round(v, 5) for v in p.tolist()] for p in probs]}
            self.history.append(rec)
            self.save()
            u = self.cost.unit
            tgt = f" target {self.target:.2f} {u}" if self.target is not None else ""
            self.log(f"epoch {self.epoch}/{cfg.epochs} {rec['phase']}: w_loss {rec['w_loss']:.6f} "
                     f"a_loss {rec['a_loss']:.6f} lambda {self.lam:.5f} T {self.net.temperature:.3f} "
                     f"decided {rec['convergence']:.2f} expected {rec['expected_cost']:.2f} {u} "
                     f"argmax arch {rec['derived_cost']:.2f} {u}{tgt} ({rec['seconds']:.1f} s, "
                     f"cpu {rec['cpu_seconds']:.1f} s)")

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
    def step_times(self, ref_name: str | None = None, repeats: int = 3) -> dict:
        """One search step (w step + alpha step, this run's mode) vs one training step of the reference arch with
        the space's head (EfficientPose-A, MBV1 head), same batch and input: median seconds (wall and CPU) and the
        peak memory of each. Runs on copies, so the saved search state is untouched.

        Memory: each step runs once more in a forked child that first returns glibc's free heap to the system and
        has every block over 64 KiB mmapped; its peak RSS (getrusage ru_maxrss) minus its RSS before the step is
        what the step added: activations, gradients, optimizer state (approximate: RSS in pages, small blocks
        from the heap the parent left, whatever else the process holds).
        """
        from model.net import build

        ref_name = ref_name or self.cfg.reference or "efficientpose_a"
        batch = next(iter(loader(self.w_half, self.cfg.batch_size, self.cfg.seed, 10**6)))
        me = copy.copy(self)
        me.net = copy.deepcopy(self.net)
        me.w_opt = torch.optim.Adam(me.net.weights(), self.cfg.w_lr)
        me.a_opt = torch.optim.Adam(list(me.net.alphas), self.cfg.alpha_lr, betas=(0.5, 0.999))
        me.drop_gen = torch.Generator().manual_seed(0)
        me.target = None
        ref = build(reference_arch(ref_name, self.space)).to(self.dev).train()
        opt = torch.optim.Adam(ref.parameters(), self.cfg.w_lr)
        x, y, w = self._batch(batch)

        def train_step():
            loss = heatmap_loss(ref(x), y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def search_step():
            me.w_step(batch)
            me.a_step(batch)

        def timed(fn):
            fn()  # warm-up
            wall, cpu = [], []
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                fn()
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            return float(np.median(wall)), float(np.median(cpu))

        # Interleaved, so the machine's load hits both alike.
        (s_wall, s_cpu), (t_wall, t_cpu) = timed(search_step), timed(train_step)
        (s_wall2, s_cpu2), (t_wall2, t_cpu2) = timed(search_step), timed(train_step)
        s_wall, s_cpu, t_wall, t_cpu = min(s_wall, s_wall2), min(s_cpu, s_cpu2), min(t_wall, t_wall2), \
            min(t_cpu, t_cpu2)
        return {"batch": list(x.shape), "paths": self.cfg.paths, "reference": f"{ref_name} ({self.space.head.type} "
                "head)", "search_step_s": s_wall, "train_step_s": t_wall, "ratio": s_wall / t_wall,
                "search_step_cpu_s": s_cpu, "train_step_cpu_s": t_cpu, "ratio_cpu": s_cpu / t_cpu,
                "search_step_peak_mb": _peak_mb(search_step), "train_step_peak_mb": _peak_mb(train_step),
                "memory_method": "forked child, glibc heap trimmed and large blocks mmapped: getrusage ru_maxrss minus "
                                 "RSS before the step (approximate)"}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb(fn) -> float | None:
    """Peak RSS growth (MiB) of one call of `fn` in a forked child; None where fork or /proc is unavailable."""
    import multiprocessing as mp
    import resource

    if not Path("/proc/self/statm").exists() or "fork" not in mp.get_all_start_methods():
        return None

    def child(q):
        try:
            try:  # glibc: give freed heap back and mmap every large block, so the step's tensors show in the RSS
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
                libc.malloc_trim(0)
                libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
            except (OSError, AttributeError):
                pass
            r0 = _rss_mb()
            fn()
            q.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - r0)  # ru_maxrss: KiB on Linux
        except Exception:
            q.put(None)

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,), daemon=True)
    p.start()
    try:
        v = q.get(timeout=300)
    except Exception:
        v = None
    p.join(10)
    if p.is_alive():
        p.kill()
    return None if v is None else round(max(0.0, v), 1)


def _mean(v):
    return float(np.mean(v)) if v else float("nan")


def _default_data():
    from posekit.keypoints import DEFAULT_COCO

    return DEFAULT_COCO


def config_dict(cfg: Config) -> dict:
    d = asdict(cfg)
    d["input_size"] = list(cfg.input_size)
    return d
