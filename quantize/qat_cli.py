"""python -m quantize qat: quantization-aware fine-tuning of a trained checkpoint, then a fully-integer .tflite whose
scales are the learned ones (no re-calibration), exact to its PyTorch twin; listed in the manifest (quantizer qat)
beside the post-training int8.

Fake quantization reproduces the int8 graph the converter emits (quantize/qat.py): per-channel symmetric int8
weights, per-tensor asymmetric int8 activations after every fused conv + BN + activation, at each residual ADD, the
head's sub-pixel convs, the input; BatchNorm folded as the export folds it. Ranges start from calibration
(min/max, as the PTQ int8) and are learned. Loss: by default distillation, the float checkpoint's heatmaps of
the same crops as the target (--loss labels: the ground truth). Data pipeline: the checkpoint's own training
config. A killed run resumes from <out>/last.pt when started again with the same options. Multi-GPU: torchrun
--nproc_per_node N -m quantize qat ...
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from posekit.cli import (
    ArgumentParser,
    data_dir,
    main_guard,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    torch_device,
)
from posekit.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m quantize qat", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="trained checkpoint (default: runs/demo/train/best.pt, what `make demo` trains)")
    p.add_argument("--data", type=data_dir, help="dataset root (default: the checkpoint's training data)")
    p.add_argument("--epochs", type=nonneg_int, default=6, help="QAT epochs (default 6; 0: calibrated ranges only)")
    p.add_argument("--lr", type=positive_float, default=1e-5,
                   help="Adam learning rate of the weights (default 1e-5: about 1%% of a training run's)")
    p.add_argument("--range-lr", type=positive_float, default=1e-3,
                   help="Adam learning rate of the activation ranges (default 1e-3)")
    p.add_argument("--loss", choices=["distill", "labels"], default="distill",
                   help="distill (default): match the float checkpoint's heatmaps on the same crops, every joint; "
                        "QAT's job is an int8 net that computes what the float one does, and with little data "
                        "fitting the labels again moves it away from the float net. labels: the training loss "
                        "(ground-truth heatmaps, labelled joints)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="per process (default 8)")
    p.add_argument("--calib", type=positive_int, default=32, help="calibration crops for the initial ranges (32)")
    p.add_argument("--limit", type=positive_int, help="only the first N training persons (smoke tests)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="training augmentation (default: as the checkpoint was trained)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--device", type=torch_device, default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", type=Path, help="run folder (default runs/qat/<model name>); a run there with the same "
                                            "options is resumed")
    p.add_argument("--artifacts", type=Path, help="artifacts folder (default: the one converted from this "
                                                  "checkpoint, else artifacts/<model name>)")
    p.add_argument("--int8-io", action="store_true", help="int8 input/output tensors (default float32 I/O)")
    p.add_argument("--no-eval", action="store_true", help="skip the AP of the twin before and after QAT")
    p.add_argument("--no-export", action="store_true", help="train only (no .tflite, no manifest entry)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


@main_guard
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    import torch

    from model.checkpoint import read_checkpoint
    from posekit.console import quiet_libraries
    from posekit.paths import DEMO_CKPT

    from . import qat_train

    quiet_libraries()
    warnings.formatwarning = lambda msg, *args, **kw: f"warning: {msg}\n"  # one line, no source excerpt (as train)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.ckpt is None:
        if not DEMO_CKPT.is_file():
            raise UserError(f"{DEMO_CKPT}: no such checkpoint (run `make demo`, or pass --ckpt)")
        a.ckpt = str(DEMO_CKPT)
    ckpt = read_checkpoint(a.ckpt)
    name = ckpt["arch"].get("name", "model")
    cfg = qat_train.run_config(a, ckpt)
    out = a.out or Path("runs") / "qat" / name
    rank0 = int(os.environ.get("RANK", "0")) == 0
    trainer = qat_train.QATTrainer(cfg, out, log=print)
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        print(f"qat: {a.ckpt} ({name}), {cfg['epochs']} epochs, loss {cfg['loss']}, batch {cfg['batch_size']}, "
              f"lr {cfg['lr']} / ranges {cfg['range_lr']}, {len(trainer.ds)} training persons of {cfg['data']} -> "
              f"{out}")
    report = {"config": cfg}
    if rank0 and cfg["eval"] and trainer.start == 0:
        report["ap_before"] = qat_train.twin_ap(trainer.qat, cfg, trainer.arch)
        print(f"qat: twin AP before QAT (calibrated ranges: the PTQ int8): {report['ap_before']:.4f}")
    qat = trainer.fit()
    if not rank0:
        return 0
    if cfg["eval"]:
        report["ap_after"] = qat_train.twin_ap(qat, cfg, trainer.arch)
        print(f"qat: twin AP after QAT: {report['ap_after']:.4f}")
    report["metrics"] = trainer.records
    if not a.no_export:
        artifacts = a.artifacts or qat_train.default_artifacts(a.ckpt, name)
        report["artifact"] = qat_train.export(qat, trainer.arch, cfg, out, artifacts, a.int8_io)
        print(f"qat: wrote {artifacts / report['artifact']['file']} and {artifacts / 'manifest.json'}")
        if cfg["eval"]:
            report["compare"] = c = qat_train.compare(a.ckpt, artifacts, cfg)
            for k in ("ptq", "qat"):
                if k in c:
                    print(f"qat: {k.upper()} int8 on {c['split']}: AP {c[k]['ap']:.4f} (float {c['float']['ap']:.4f}, "
                          f"dAP {c[k]['dap']:+.4f}), OKS-agreement with float {c[k]['oks_agreement']:.4f}")
    qat_train.write_report(out / "report.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
