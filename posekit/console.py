"""`posenas <stage> ...`: one console command (pyproject [project.scripts]) for every stage's CLI. It imports the
stage's `__main__` and calls its main(argv), so `posenas convert --help` is `python -m convert --help`. Also what every
stage's console needs: `quiet_libraries` (third-party log records below ERROR)."""

from __future__ import annotations

import importlib
import logging
import os
import sys

# stage -> what it does (the order of the pipeline)
STAGES = {
    "model": "inspect, validate and scale arch files (python -m model)",
    "device_bench": "per-op latency tables on real targets, model benchmarks, LUT fidelity (python -m device_bench)",
    "search": "latency-aware architecture search (python -m search)",
    "train": "train a pose network on COCO / MPII (python -m train)",
    "convert": "TFLite / Core ML / ONNX artifacts + manifest.json (python -m convert)",
    "quantize": "the quantized artifacts alone (python -m quantize)",
    "parity": "artifact vs PyTorch parity on real crops (python -m parity)",
    "demo": "the whole pipeline on bundled data (python -m demo)",
    "predict": "run an artifact on images: COCO keypoints json + overlay (python -m predict)",
    "profile": "per-op latency of a .tflite on this host, XNNPACK and builtin (python -m runtime.tflite_profile)",
}
# stages whose CLI is not <stage>.__main__ (`profile` would be the standard library's profiler)
MODULES = {"profile": "runtime.tflite_profile"}


def quiet_libraries():
    """The converters log a lot that is not for the user (absl C++ logs, coremltools' missing macOS runtime on
    Linux, torchao's optional kernels): drop their Python log records below ERROR; what they print on fds 1/2 goes
    to <out>/convert.log during a run (convert/worker.py: chatter_to)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")
    for name in ("coremltools", "torchao", "absl", "torch.utils._pytree", "torch.export", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def usage() -> str:
    w = max(map(len, STAGES))
    lines = ["usage: posenas <stage> [options]   (posenas <stage> --help for a stage's options)", "", "stages:"]
    lines += [f"  {name:<{w}}  {text}" for name, text in STAGES.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"error: posenas: unknown stage {stage!r} (one of {', '.join(STAGES)})", file=sys.stderr)
        return 2
    mod = importlib.import_module(MODULES.get(stage, f"{stage}.__main__"))
    return mod.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
