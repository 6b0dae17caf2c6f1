"""`python -m convert head-bench`: the MBV1 head's deconv rewrites against litert-torch's direct lowering and the
plain head, as head-only .tflite models (fp32, and quantized from it: fp16, int8 full-integer static, int8-dynamic)
timed on this host in ONE interleaved run (the fastest round's median), with the per-op profile of the plain head
and of the shipped rewrite (model.deploy.TFLITE_REWRITE) at each precision."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.arch import Head
from model.deploy import REWRITES, TFLITE_REWRITE, deploy_model
from model.heads import PoseHead
from model.source import randomize
from posekit import export_tflite
from runtime import tflite, tflite_flatbuffer

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")  # quantize.tflite.PRECISIONS, as the .tflite targets ship
# Per-op profiles: not fp16, whose single-op models (weights through DEQUANTIZE) XNNPACK fails to set up
# ("failed to setup XNNPACK runtime", runtime/tflite_profile.py).
PROFILED = ("fp32", "int8", "int8-dynamic")
TARGET = 0.33  # issue 27: the MBV1 head at its FLOP ratio (0.31) to the plain head, with a little slack
COMPUTE = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")  # the ops that do the head's multiply-adds


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


def _files(rewrites, precisions, x, d: Path, out) -> dict[tuple[str, str], Path]:
    """{(precision, label): .tflite}: each variant converted once to fp32, the other precisions quantized from it
    (as convert makes them; int8 calibrated on 8 normal batches shaped like the head's input)."""
    from quantize.tflite import quantize_tflite

    calib = [torch.randn_like(x) for _ in range(8)]
    files = {}
    for label, m in variants(rewrites):
        fp32 = export_tflite.litert_to_tflite(m, x, d / f"{label}-fp32.tflite")
        for p in precisions:
            path = fp32 if p == "fp32" else quantize_tflite(fp32, d / f"{label}-{p}.tflite", p,
                                                           calib if p == "int8" else None)
            ops = tflite_flatbuffer.op_counts(path)
            out(f"converted {p:12s} {label:16s} ops={sum(ops.values()):4d} {dict(sorted(ops.items()))}")
            files[p, label] = path
    return files


def head_bench(shape=(16, 12, 96), rounds: int = 7, iters: int = 30, threads: int = 1, xnnpack: bool = True,
               rewrites=REWRITES, out=print, profile: bool = True, precisions=("fp32", "int8")) -> dict:
    """Convert each variant at each precision, then time them all round-robin; returns {precision: {label: ms}},
    each the fastest round's median invoke. With one thread the clock is the calling thread's CPU time (the runtime
    works on that thread), which other jobs on a shared host inflate less; with more threads it is wall time."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    kernels = "xnnpack" if xnnpack else "builtin"
    h, w, c = shape
    x = torch.randn(1, c, h, w)
    its, profiles = {}, {}
    with tempfile.TemporaryDirectory() as d:
        files = _files(rewrites, precisions, x, Path(d), out)
        for key, path in files.items():
            it = tflite.interpreter(path, threads=threads, kernels=kernels)
            (name, det), = it.get_signature_runner(tflite.SIGNATURE).get_input_details().items()
            it.set_tensor(det["index"], x.permute(0, 2, 3, 1).numpy().astype(np.float32))
            time_invoke(it, 3)  # warm-up
            its[key] = it
        times = {k: [] for k in its}
        for _ in range(rounds):  # interleaved: every variant and precision sees the same machine load
            for k, it in its.items():
                times[k].append(time_invoke(it, iters, clock))
        med = {k: min(v) for k, v in times.items()}  # other jobs on a shared host only add time: the fastest round
        res = {p: {lab: v for (q, lab), v in med.items() if q == p} for p in precisions}
        _table(res, shape, rounds, iters, threads, xnnpack, out)
        if profile and threads == 1:  # where the time goes (runtime/tflite_profile.py), plain vs the shipped rewrite
            from runtime.tflite_profile import profile_tflite

            for (p, label), path in files.items():
                if label in ("plain", f"mbv1-{TFLITE_REWRITE}") and p in PROFILED:
                    profiles[p, label] = profile_tflite(path, kernels)[kernels]
    for line in summary(res, profiles):
        out(line)
    return res


def _table(res, shape, rounds, iters, threads, xnnpack, out):
    h, w, c = shape
    for p in res:
        m = res[p]
        out(f"head-only {p}, in {h}x{w}x{c}, {threads} thread(s), {'XNNPACK' if xnnpack else 'builtin'}, "
            f"{'thread CPU' if threads == 1 else 'wall'} time, fastest of {rounds} interleaved rounds' median of "
            f"{iters} invokes:")
        for k, v in m.items():
            rel = [f"{m['mbv1-none'] / v:5.2f}x faster than direct" if "mbv1-none" in m else "",
                   f"{v / m['plain']:4.2f}x plain" if "plain" in m else ""]
            out(f"  {k:16s} {v:8.3f} ms   " + "   ".join(rel))


def summary(res: dict, profiles: dict) -> list[str]:
    """The shipped rewrite's ratio to the plain head per precision against TARGET, with its per-op profile; above
    the target, the op types the rewrite spends time in beyond the plain head's (what keeps it there)."""
    from runtime.tflite_profile import format_profile

    lab = f"mbv1-{TFLITE_REWRITE}"
    lines = []
    for p, m in res.items():
        if lab not in m or "plain" not in m:
            continue
        r = m[lab] / m["plain"]
        lines.append(f"shipped rewrite {TFLITE_REWRITE!r} ({p}): {r:.2f}x plain "
                     f"({'within' if r <= TARGET else 'ABOVE'} the {TARGET}x target)")
        prof, plain = profiles.get((p, lab)), profiles.get((p, "plain"))
        if prof is None:
            if profiles and p not in PROFILED:
                lines.append(f"  ({p}: no per-op profile, see PROFILED)")
            continue
        lines.append(format_profile(prof, top=8))
        if r > TARGET and plain is not None:  # what keeps it above: the MAC ops, or the ones that move data
            by = prof.by_type()
            comp = sum(by.get(t, 0.0) for t in COMPUTE)
            move = sorted(((t, ms) for t, ms in by.items() if t not in COMPUTE), key=lambda e: -e[1])
            base = plain.model_ms or plain.sum_ms
            lines.append(f"  above the target: in the profiles its conv ops take {comp:.3f} ms ({comp / base:.2f}x the "
                         f"plain head's whole {base:.3f} ms), the ops that only move or requantize data "
                         f"{sum(ms for _, ms in move):.3f} ms (" + ", ".join(f"{t} {ms:.3f}" for t, ms in move) + ")")
            f32 = profiles.get(("fp32", lab))
            if f32 is not None and p != "fp32":  # the same graph in fp32: which op type the precision slows down
                ref = f32.by_type()
                lines.append("  by op type against the same graph in fp32: " + ", ".join(
                    f"{t} {ms:.3f} ms ({ms / ref[t]:.1f}x)" for t, ms in by.items() if ref.get(t)))
    return lines


def onnx_bench(shape=(16, 12, 96), rounds: int = 7, iters: int = 30, rewrites=REWRITES, out=print) -> dict:
    """The same variants as ONNX (torch.onnx export, opset 17, onnxsim, as posekit/export_onnx.py makes the ONNX
    target) on onnxruntime's CPU provider, 1 thread, timed round-robin like head_bench; each variant's max |difference|
    from its PyTorch module is printed. Returns {label: ms}."""
    import contextlib
    import io

    import onnx
    import onnxsim

    from posekit.export_onnx import OPSET
    from runtime.onnx import session

    h, w, c = shape
    x = torch.randn(1, c, h, w)
    sess = {}
    for label, m in variants(rewrites):
        buf = io.BytesIO()
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=OPSET, input_names=["x"], output_names=["y"])
            simp, _ = onnxsim.simplify(onnx.load_from_string(buf.getvalue()))
        s = session(simp.SerializeToString(), threads=1, what=f"{label}.onnx")
        with torch.no_grad():
            err = float(np.abs(s.run(None, {"x": x.numpy()})[0] - m(x).numpy()).max())
        out(f"onnx {label:16s} nodes={len(simp.graph.node):4d} max |onnxruntime - torch| {err:.2e}")
        sess[label] = s
    times = {k: [] for k in sess}
    feed = {"x": x.numpy()}
    for _ in range(rounds):
        for k, s in sess.items():
            ts = []
            for _ in range(iters):
                t = time.thread_time()
                s.run(None, feed)
                ts.append(time.thread_time() - t)
            times[k].append(statistics.median(ts) * 1e3)
    med = {k: min(v) for k, v in times.items()}
    out(f"head-only ONNX fp32, in {h}x{w}x{c}, onnxruntime CPU, 1 thread, thread CPU time, fastest of {rounds} "
        f"interleaved rounds' median of {iters} runs:")
    for k, v in med.items():
        out(f"  {k:16s} {v:8.3f} ms   {v / med['plain']:4.2f}x plain" if "plain" in med else f"  {k:16s} {v:8.3f} ms")
    return med
