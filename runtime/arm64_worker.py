"""Runs inside the emulated aarch64 python (runtime/arm64.py starts it under qemu-user): each .tflite on every input
of its IO/inputs-J.npz, raw outputs to IO/outputs-J.npz, and what this runtime saw to IO/seen.json.

Only the standard library, numpy and ai_edge_litert are importable here (the project is not installed in the
sysroot). usage: python3.11 arm64_worker.py IO_DIR xnnpack|builtin THREADS MODEL...
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
from importlib.metadata import version

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

SIGNATURE = "serving_default"
AT_HWCAP, AT_HWCAP2 = 16, 26


def cpu_features() -> list[str]:
    """The Features line of /proc/cpuinfo as this (emulated) CPU reports it (QEMU >= 8 writes it from the -cpu
    model's HWCAPs)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("Features"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def run_one(model: str, inputs_path: str, outputs_path: str, kernels: str, threads: int) -> list[str]:
    """Every input of inputs_path through model; raw outputs to outputs_path; the op names LiteRT reports."""
    kind = OpResolverType.BUILTIN if kernels == "xnnpack" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=model, num_threads=threads, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    runner = it.get_signature_runner(SIGNATURE)
    (iname, _), = runner.get_input_details().items()  # the project's artifacts have one input
    outs = {}
    with np.load(inputs_path) as inputs:
        for key in sorted(inputs.files, key=int):
            for name, y in runner(**{iname: inputs[key]}).items():
                outs[f"{key}/{name}"] = np.asarray(y)
    np.savez(outputs_path + ".tmp.npz", **outs)
    os.replace(outputs_path + ".tmp.npz", outputs_path)
    return [o["op_name"] for o in it._get_ops_details()]  # a DELEGATE node stands for the ops XNNPACK took


def main(io_dir: str, kernels: str, threads: int, models: list[str]) -> None:
    """Model j reads IO_DIR/inputs-j.npz, writes IO_DIR/outputs-j.npz (one emulator start for all: most of a run's
    time is python, numpy and LiteRT starting under emulation)."""
    delegates = []
    for j, model in enumerate(models):
        ops = run_one(model, os.path.join(io_dir, f"inputs-{j}.npz"), os.path.join(io_dir, f"outputs-{j}.npz"),
                      kernels, threads)
        delegates.append(ops.count("DELEGATE"))
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    seen = {"machine": platform.machine(), "litert": version("ai-edge-litert"), "numpy": np.__version__,
            "features": cpu_features(), "hwcap": hex(libc.getauxval(AT_HWCAP)),
            "hwcap2": hex(libc.getauxval(AT_HWCAP2)), "delegate_nodes": delegates}
    with open(os.path.join(io_dir, "seen.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
