"""`python -m convert head-bench`: the MBV1 head's deconv rewrites against litert-torch's direct lowering and the
plain head, as head-only fp32 .tflite models timed on this host in ONE interleaved run (medians of rounds)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.arch import Head
from model.deploy import REWRITES, deploy_model
from model.heads import PoseHead
from model.source import randomize
from posekit import export_tflite
from runtime import tflite, tflite_flatbuffer


def head_model(kind: str, cin: int = 96, joints: int = 17, deconv=(64, 32), kernel: int = 4, sic: bool = True):
    return randomize(PoseHead(cin, joints, Head(kind, list(deconv), kernel, sic))).eval()


def time_invoke(it, n: int, clock=time.perf_counter) -> float:
    """Median ms of n invokes of an allocated interpreter (inputs left as set)."""
    ts = []
    for _ in range(n):
        t = clock()
        it.invoke()
        ts.append(clock() - t)
    return statistics.median(ts) * 1e3


def variants(rewrites=REWRITES):
    """(label, model) pairs: the plain head deployed, and the MBV1 head under each rewrite."""
    out = [("plain", deploy_model(head_model("plain")))]
    mbv1 = head_model("mbv1")
    out += [(f"mbv1-{how}", deploy_model(mbv1, how)) for how in rewrites]
    return out


def head_bench(shape=(16, 12, 96), rounds: int = 7, iters: int = 30, threads: int = 1, xnnpack: bool = True,
               rewrites=REWRITES, out=print, profile: bool = True) -> dict[str, float]:
    """Convert each variant, then time them round-robin; returns {label: median ms}. With one thread the clock is
    the calling thread's CPU time (the runtime works on that thread), which other jobs on a shared host do not
    inflate; with more threads it is wall time."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    h, w, c = shape
    x = torch.randn(1, c, h, w)
    its, paths = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for label, m in variants(rewrites):
            path = export_tflite.litert_to_tflite(m, x, Path(d, f"{label}.tflite"))
            ops = tflite_flatbuffer.op_counts(path)
            out(f"converted {label:14s} ops={sum(ops.values()):4d} {dict(sorted(ops.items()))}")
            it = tflite.interpreter(path, threads=threads, kernels="xnnpack" if xnnpack else "builtin")
            (name, det), = it.get_signature_runner(tflite.SIGNATURE).get_input_details().items()
            it.set_tensor(det["index"], x.permute(0, 2, 3, 1).numpy().astype(np.float32))
            time_invoke(it, 3)  # warm-up
            its[label], paths[label] = it, path
        times = {k: [] for k in its}
        for _ in range(rounds):  # interleaved: every variant sees the same machine load
            for k, it in its.items():
                times[k].append(time_invoke(it, iters, clock))
        if profile and threads == 1:  # where each variant's time goes (runtime/tflite_profile.py)
            from runtime.tflite_profile import format_profile, profile_tflite

            for k in ("plain", "mbv1-subpixel", "mbv1-phases", "mbv1-interleave"):
                if k in paths:
                    out(format_profile(profile_tflite(paths[k], "xnnpack" if xnnpack else "builtin")[
                        "xnnpack" if xnnpack else "builtin"], top=6).replace(paths[k].name, k, 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    out(f"head-only fp32, in {h}x{w}x{c}, {threads} thread(s), {'XNNPACK' if xnnpack else 'builtin'}, "
        f"{'thread CPU' if threads == 1 else 'wall'} time, median of {rounds} interleaved rounds x {iters} invokes:")
    for k, v in med.items():
        rel = [f"{med['mbv1-none'] / v:5.2f}x faster than direct" if "mbv1-none" in med else "",
               f"{v / med['plain']:4.2f}x plain" if "plain" in med else ""]
        out(f"  {k:14s} {v:8.3f} ms   " + "   ".join(rel))
    return med
