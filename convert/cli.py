"""python -m convert: write every artifact of a model and its manifest.json (this module is the CLI; __main__
runs it); `python -m convert head-bench` times the MBV1 head's deconv rewrites (see model/deploy.py)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from posekit.cli import (
    ArgumentParser,
    data_dir,
    float_range,
    hxw,
    hxw_type,
    main_guard,
    output_dir,
    positive_int,
)
from posekit.console import quiet_libraries
from posekit.lock import folder_lock

from .targets import BY_NAME, GROUPS


def add_model_args(p: argparse.ArgumentParser, default_targets: str):
    p.add_argument("--ckpt", help="checkpoint (model/checkpoint.py format); default: runs/demo/train/best.pt if "
                                  "it exists, else EfficientPose-A with the MBV1 head (random init, so marked)")
    p.add_argument("--arch", help="arch file or shipped name (instead of --ckpt): random init, for conversion only")
    p.add_argument("--head", choices=("plain", "mbv1", "mbv2"), help="switch the head type of --arch")
    p.add_argument("--input", type=hxw, help="override the input size, HxW (e.g. 128x96)")
    p.add_argument("--calib", type=positive_int, default=32, help="calibration crops for static int8 (default 32)")
    p.add_argument("--data", type=data_dir,
                   help="dataset root for calibration crops (default: bundled data/coco-mini or mpii-mini)")
    p.add_argument("--out", type=output_dir, help="output folder (default artifacts/<model name>)")
    p.add_argument("--int8-io", action="store_true", help="int8 input/output tensors for the int8 .tflite (scale and "
                                                          "zero point in the manifest); default float32 I/O")
    p.add_argument("--int8-candidates", nargs="+", choices=("static_wi8_ai8", "static_wi8_ai16", "pt2e", "tf"),
                   help="int8 quantizers to build and score on held-out crops by OKS-agreement with the float "
                        "model (SQNR as tie-break) (default: the two ai-edge-quantizer recipes; pt2e costs a second "
                        "conversion; tf: the TensorFlow path, `tf` extra); the best fully-integer one with int8 "
                        "activations ships, all scores go to manifest.json")
    p.add_argument("--jobs", type=positive_int, default=2,
                   help="processes: 2 runs Core ML + ONNX beside TFLite (default 2)")
    p.add_argument("--targets", nargs="+", default=[default_targets], metavar="T",
                   help=f"groups {', '.join(GROUPS)} or single artifacts: {', '.join(BY_NAME)} (default "
                        f"{default_targets}; the registry: convert/targets.py)")
    p.add_argument("--decode", action="store_true",
                   help="also write the decoded twin (-kp: the keypoint decode in the graph, output `keypoints` "
                        "(1, J, 3) = x, y, score in input-crop pixels) of each selected tflite-fp32, tflite-int8, "
                        "coreml-fp16 and onnx target")
    p.add_argument("--kernel-timing", type=float_range(0.0, 60.0), default=1.0, metavar="SECONDS",
                   help="per .tflite: time its kernel sets on this host for this long (interleaved, 3 rounds at "
                        "least) and record the fastest and each set's ms in manifest.json and the file's metadata "
                        "(runtime/tflite_kernels.py); 0 skips it (default 1)")


def run(args, log=print):
    from model.source import load_source
    from quantize.calibration import calibration_batches

    from .pipeline import convert, expand_targets

    if args.calib < 1:
        from posekit.errors import UserError

        raise UserError(f"--calib {args.calib}: needs at least 1 crop")
    targets = expand_targets(args.targets, getattr(args, "decode", False))
    with contextlib.ExitStack() as stack:
        if args.out:  # one writer per folder: refuse at once, before loading the model
            stack.enter_context(folder_lock(args.out, "an artifact folder"))
        src = load_source(args.ckpt, args.arch, args.head, args.input,
                          crops=lambda arch: calibration_batches(arch, args.data, 8))
        if {"tflite-int8", "tflite-int8-kp"} & set(targets):  # bad calibration data: refused before any file is written
            from posekit.data import check_pose_data

            check_pose_data(src.arch.num_joints, args.data)
        out = args.out or Path("artifacts") / src.name
        log(f"{src.name}: {src.note}; input {src.arch.input_size[0]}x{src.arch.input_size[1]} -> {out}")
        convert(src, out, targets, args.calib, args.data, args.int8_io, args.int8_candidates, args.jobs, log,
                locked=bool(args.out), kernel_timing_s=args.kernel_timing)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m convert", description=__doc__,
                       epilog="`python -m convert head-bench --help` for the head benchmark")
    add_model_args(p, "all")
    return p



def bench_parser() -> argparse.ArgumentParser:
    from model.deploy import REWRITES

    from .head_bench import PRECISIONS

    p = ArgumentParser(prog="python -m convert head-bench",
                       description="Head-only .tflite latency of the MBV1 head's deconv rewrites vs "
                                   "litert-torch's direct lowering and the plain head (one interleaved run).")
    p.add_argument("--in-shape", default=(16, 12, 96), type=hxw_type(n=3),
                   help="head input HxWxC (default: EfficientPose-A's 16x12x96)")
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--iters", type=positive_int, default=30)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--builtin", action="store_true", help="builtin TFLite kernels instead of XNNPACK")
    p.add_argument("--rewrites", nargs="+", default=None, choices=REWRITES,
                   help="MBV1 deconv rewrites to time (default: all; none = litert-torch's direct lowering)")
    p.add_argument("--precision", nargs="+", default=["fp32", "int8"], choices=[*PRECISIONS, "all"],
                   help="head .tflite precisions, each quantized from the fp32 file as convert does (default: fp32 "
                        "int8; all = fp32 fp16 int8 int8-dynamic)")
    p.add_argument("--onnx", action="store_true", help="also time the variants as ONNX on onnxruntime (1 thread)")
    return p


@main_guard
def main(argv=None):
    quiet_libraries()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["head-bench"]:
        from model.deploy import REWRITES

        from .head_bench import PRECISIONS, head_bench, onnx_bench

        a = bench_parser().parse_args(argv[1:])
        precisions = PRECISIONS if "all" in a.precision else tuple(dict.fromkeys(a.precision))
        head_bench(a.in_shape, a.rounds, a.iters, a.threads, not a.builtin, a.rewrites or REWRITES,
                   precisions=precisions)
        if a.onnx:
            onnx_bench(a.in_shape, a.rounds, a.iters, a.rewrites or REWRITES)
        return 0
    return run(build_parser().parse_args(argv))

