"""Runs inside the emulated aarch64 python (runtime/arm64.py starts it under qemu-user): one .tflite, every input of
IO/inputs.npz, raw outputs to IO/outputs.npz and what this runtime saw to IO/seen.json.

Only the standard library, numpy and ai_edge_litert are importable here (the project is not installed in the
sysroot). usage: python3.11 arm64_worker.py MODEL IO_DIR xnnpack|builtin THREADS
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


def main(model: str, io_dir: str, kernels: str, threads: int) -> None:
    kind = OpResolverType.BUILTIN if kernels == "xnnpack" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=model, num_threads=threads, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    runner = it.get_signature_runner(SIGNATURE)
    (iname, _), = runner.get_input_details().items()  # the project's artifacts have one input
    outs = {}
    with np.load(os.path.join(io_dir, "inputs.npz")) as inputs:
        for key in sorted(inputs.files, key=int):
            for name, y in runner(**{iname: inputs[key]}).items():
                outs[f"{key}/{name}"] = np.asarray(y)
    np.savez(os.path.join(io_dir, "outputs.npz.tmp.npz"), **outs)
    os.replace(os.path.join(io_dir, "outputs.npz.tmp.npz"), os.path.join(io_dir, "outputs.npz"))
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    ops = [o["op_name"] for o in it._get_ops_details()]  # a DELEGATE node stands for the ops XNNPACK took
    seen = {"machine": platform.machine(), "litert": version("ai-edge-litert"), "numpy": np.__version__,
            "features": cpu_features(), "hwcap": hex(libc.getauxval(AT_HWCAP)),
            "hwcap2": hex(libc.getauxval(AT_HWCAP2)), "delegate_nodes": ops.count("DELEGATE"),
            "ops": len(ops) - ops.count("DELEGATE")}
    with open(os.path.join(io_dir, "seen.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
