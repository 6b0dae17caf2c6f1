"""The QAT run: fine-tune a trained checkpoint's fake-quant twin (quantize/qat.py) with train's data pipeline and
loss, an atomic checkpoint every epoch (resumed after a kill: same result as an uninterrupted run), torchrun DDP as
train does (only rank 0 writes), then export the .tflite with the learned ranges and list it in the manifest."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from model.checkpoint import load_checkpoint, load_state_file, unwrap
from posekit import dist
from posekit.data import CocoPose, MpiiPose
from posekit.errors import UserError
from posekit.heatmap import joints_mse as weighted_mse
from posekit.io import atomic_path, atomic_write_json, sha256_file
from posekit.training import EpochBatches, evaluate, lr_factor, rng_state, set_rng_state

from .qat import QATNet, export_tflite, load_qat, qat_state, twin_agreement

# What must match for a run folder's last.pt to be resumed (anything else: a new run).
RUN_KEYS = ("ckpt_sha256", "epochs", "lr", "range_lr", "batch_size", "calib", "seed", "limit", "data", "augment",
            "loss")


def run_config(a, ckpt: dict) -> dict:
    """The QAT config: the source training run's data pipeline (dataset, splits, sigma, augmentation) with the
    QAT options on top."""
    t = ckpt.get("config") or {}
    data = a.data or t.get("data")
    cfg = {"ckpt": str(a.ckpt), "ckpt_sha256": sha256_file(a.ckpt), "epochs": a.epochs, "lr": a.lr, "loss": a.loss,
           "range_lr": a.range_lr, "batch_size": a.batch_size, "calib": a.calib, "seed": a.seed, "limit": a.limit,
           "workers": a.workers, "progress": not a.no_progress, "device": a.device,
           "data": str(data) if data else None, "dataset": t.get("dataset", "coco"),
           "train_split": t.get("train_split"), "val_split": t.get("val_split"), "sigma": t.get("sigma"),
           "augment": t.get("augment", False) if a.augment is None else a.augment, "aug": t.get("aug", {}),
           "boxes": t.get("boxes", "gt"), "flip_test": False, "headboxes": t.get("headboxes"),
           "schedule": "cosine", "warmup_epochs": 0, "eval": not a.no_eval}
    if cfg["data"] is None:
        from posekit.keypoints import DEFAULT_COCO, DEFAULT_MPII

        cfg["data"] = str(DEFAULT_MPII if cfg["dataset"] == "mpii" else DEFAULT_COCO)
    cfg["train_split"] = cfg["train_split"] or ("train" if cfg["dataset"] == "mpii" else "train2017")
    cfg["val_split"] = cfg["val_split"] or ("valid" if cfg["dataset"] == "mpii" else "val2017")
    return cfg


class QATTrainer:
    def __init__(self, cfg: dict, out: Path, log=print):
        self.rank, self.world, self.device = dist.setup(cfg.get("device"))
        self.out, self.cfg, self.log_fn = Path(out), cfg, log
        net, self.arch, _ = load_checkpoint(cfg["ckpt"])
        # distill: a frozen copy of the float net is the teacher (net itself is what QATNet starts from)
        self.teacher = copy.deepcopy(net).to(self.device).requires_grad_(False) if cfg.get("loss") == "distill" \
            else None
        last = self.out / "last.pt"
        state = None
        if last.is_file():
            state = load_state_file(last, "QAT run state")
            old = state.get("config", {}) if isinstance(state, dict) else {}
            diff = [k for k in RUN_KEYS if old.get(k) != cfg.get(k)]
            if diff:
                raise UserError(f"{last}: a QAT run with other settings ({', '.join(diff)}) is there: pass --out for "
                                "a new run folder, or delete it")
        torch.manual_seed(cfg["seed"])
        if state is not None:
            self.qat = load_qat(state)[0]
            self.start, self.records = int(state["epoch"]), list(state["metrics"])
            self.log(f"qat: resuming {last} after epoch {self.start}/{cfg['epochs']}")
        else:
            from quantize.calibration import calibration_batches

            self.qat = QATNet(net)
            calib = calibration_batches(self.arch, cfg["data"], cfg["calib"])
            self.qat.calibrate(calib)  # the PTQ ranges: min/max over the calibration crops
            self.start, self.records = 0, []
        self.qat.to(self.device)
        ds = MpiiPose if cfg["dataset"] == "mpii" else CocoPose
        self.ds = ds(cfg["data"], cfg["train_split"], self.arch.input_size, train=cfg["augment"],
                     num_joints=self.arch.num_joints, limit=cfg["limit"], sigma=cfg["sigma"], **cfg["aug"])
        self.model = self.qat
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.qat, device_ids=[self.device] if self.device.type == "cuda" else None)
        # Two groups: the (BN-folded) weights at the fine-tuning rate, the ranges faster (Adam: steps ~ lr).
        self.opt = torch.optim.Adam([{"params": self.qat.weight_parameters(), "lr": cfg["lr"]},
                                     {"params": self.qat.range_parameters(), "lr": cfg["range_lr"]}])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(cfg))
        if state is not None:
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
        self.batches = EpochBatches(self.ds, cfg, self.world, self.rank, self.device)

    def log(self, msg):
        if self.rank == 0:
            self.log_fn(msg)

    def fit(self) -> QATNet:
        cfg = self.cfg
        for epoch in range(self.start, cfg["epochs"]):
            t0 = time.time()
            loss = self.train_epoch(epoch)
            rec = {"epoch": epoch + 1, "lr": self.opt.param_groups[0]["lr"], "train_loss": loss}
            self.sched.step()
            rec["time_s"] = round(time.time() - t0, 2)
            if self.rank == 0:
                self.records.append(rec)
                self.save(epoch + 1)
                self.log(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in rec.items()}))
            dist.barrier()
        dist.cleanup()
        return self.qat.eval()

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        total, n = 0.0, 0
        bar = tqdm(self.batches.epoch(epoch), desc=f"qat epoch {epoch + 1}/{self.cfg['epochs']}", leave=False,
                   disable=self.rank != 0 or not self.cfg.get("progress", True))
        for images, heatmaps, weights in bar:
            images, heatmaps, weights = (t.to(self.device) for t in (images, heatmaps, weights))
            if self.teacher is not None:  # the float net's heatmaps of the same crops, every joint
                with torch.no_grad():
                    heatmaps, weights = self.teacher(images), torch.ones_like(weights)
            loss = weighted_mse(self.model(images), heatmaps, weights)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total, n = total + loss.item() * len(images), n + len(images)
            bar.set_postfix(loss=f"{total / n:.2e}")
        return dist.mean_across(total / max(n, 1))

    def save(self, epoch: int):
        st = qat_state(unwrap(self.model), self.arch, epoch=epoch, optimizer=self.opt.state_dict(),
                       scheduler=self.sched.state_dict(), rng=rng_state(), metrics=self.records, config=self.cfg)
        with atomic_path(self.out / "last.pt", suffix=".pt") as tmp:
            torch.save(st, tmp)


def twin_ap(qat: QATNet, cfg: dict, arch) -> float | None:
    """OKS AP (or PCKh) of the QAT twin on the config's val split (no flip test)."""

    @torch.no_grad()
    def predict(x):
        return qat.eval()(torch.from_numpy(x)).numpy()

    s = evaluate(predict, {**cfg, "workers": 0}, arch)
    return s.get("AP", s.get("PCKh"))


def export(qat: QATNet, arch, cfg: dict, run_dir: Path, artifacts: Path, int8_io: bool, log=print) -> dict:
    """Write <artifacts>/tflite/model_int8_qat[_io].tflite and the twin <artifacts>/qat/model_qat.pt, list the
    file in the manifest (quantizer 'qat') beside what convert wrote; returns the manifest entry."""
    from posekit import manifest
    from quantize.calibration import calibration_batches, eval_batches
    from quantize.tflite import fully_integer
    from runtime.tflite import io_entries

    artifacts = Path(artifacts)
    path = artifacts / "tflite" / ("model_int8_qat_io.tflite" if int8_io else "model_int8_qat.tflite")
    calib = calibration_batches(arch, cfg["data"], 1)
    info = export_tflite(qat, calib[0], path, int8_io, work=run_dir)
    twin = artifacts / "qat" / "model_qat.pt"
    with atomic_path(twin, suffix=".pt") as tmp:
        torch.save(qat_state(qat, arch, source=cfg["ckpt"], source_sha256=cfg["ckpt_sha256"]), tmp)
    evals = eval_batches(arch, cfg["data"], 8)
    agree = twin_agreement(qat, path, evals)
    log(f"qat: {path}: {info['tensors']} quantized tensors, scales == the QAT model's; vs its PyTorch twin on "
        f"{len(evals)} val crops: {agree['identical']:.2%} of int8 outputs identical, "
        f"{agree['within_one_step']:.2%} within one step")
    ins, outs = io_entries(path)
    entry = manifest.artifact(artifacts, path, "tflite", "int8", "qat", ins, outs,
                              qat={"twin": twin.relative_to(artifacts).as_posix(), "twin_sha256": sha256_file(twin),
                                   "source_checkpoint": cfg["ckpt"], "epochs": cfg["epochs"],
                                   "fully_integer": fully_integer(path), "twin_agreement": agree,
                                   "run": str(run_dir)})
    old = manifest.read(artifacts)
    if old is not None and (old.get("source") or {}).get("checkpoint_sha256") == cfg["ckpt_sha256"]:
        head = {k: v for k, v in old.items() if k != "artifacts"}
        keep = old["artifacts"]
    else:  # no conversion of this checkpoint there yet: a manifest of its own
        from model.arch import dump
        from model.source import load_source

        src = load_source(cfg["ckpt"])
        artifacts.mkdir(parents=True, exist_ok=True)
        head = manifest.header(src, dump(src.arch, artifacts / "arch.yaml",
                                         header=f"arch of the converted model (from {src.arch_origin})"))
        keep = []
    manifest.write(artifacts, head, [entry], keep)
    return entry


def default_artifacts(ckpt: str, name: str) -> Path:
    """The artifacts folder whose manifest was converted from this very checkpoint (the QAT file goes beside the
    PTQ int8), else artifacts/<model name>."""
    sha = sha256_file(ckpt)
    for m in sorted(Path("artifacts").glob("*/manifest.json")):
        try:
            if (json.loads(m.read_text()).get("source") or {}).get("checkpoint_sha256") == sha:
                return m.parent
        except (OSError, json.JSONDecodeError):
            continue
    return Path("artifacts") / name


def write_report(path: Path, report: dict):
    atomic_write_json(path, report)


def compare(ckpt: str, artifacts: Path, cfg: dict, threads: int = 1) -> dict:
    """QAT int8 against PTQ int8 on the config's val split (flip test, ground-truth boxes, as parity scores AP):
    OKS AP of the float checkpoint and of each .tflite, the AP drop, and the OKS-agreement of each .tflite's
    keypoints with the float net's (mean over persons)."""
    import numpy as np

    from posekit import manifest
    from posekit.evaluate import evaluate_model, mean_oks_agreement
    from runtime import tflite

    net, arch, _ = load_checkpoint(ckpt)
    man = manifest.read(artifacts) or {"artifacts": []}
    files = {"float": None}
    for a in man["artifacts"]:
        if a["format"] == "tflite" and a["precision"] == "int8":
            files.setdefault("qat" if a["quantizer"] == "qat" else "ptq", artifacts / a["file"])
    if cfg.get("dataset") == "mpii":
        return {"note": "compare: COCO OKS only"}

    def predictor(path):
        if path is None:
            @torch.no_grad()
            def f(x):
                return net(torch.from_numpy(x)).numpy()
            return f
        it = tflite.interpreter(path, threads=threads)
        return lambda x: np.concatenate([tflite.run(it, b[None].transpose(0, 2, 3, 1)) for b in x]).transpose(
            0, 3, 1, 2)  # the .tflite's batch is 1, NHWC

    split = cfg["val_split"]
    out, kps = {"split": split}, {}
    for name, path in files.items():
        s = evaluate_model(predictor(path), cfg["data"], split, arch.input_size, "gt", flip=True,
                           num_joints=arch.num_joints, return_keypoints=True, batch_size=8)
        kps[name] = s
        out[name] = {"ap": round(float(s["AP"]), 4), "file": str(path) if path else ckpt}
    out["persons"] = len(kps["float"]["keypoints"])
    for name in files:
        if name != "float":
            ref = kps["float"]
            oks = mean_oks_agreement(ref["keypoints"], kps[name]["keypoints"], ref["areas"], ref["labelled"])
            out[name].update(dap=round(out["float"]["ap"] - out[name]["ap"], 4), oks_agreement=round(oks, 4))
    return out
