"""The fastest kernel set for a .tflite on this host (issue 27), measured: bench (`--kernels auto`), the host LUT's
choice (`device_bench lut --kernels auto`) and convert's kernel record (manifest entry and in-file metadata) call
`fastest_kernels` / `kernels_record`. The sets themselves and the in-memory routing: runtime/tflite_kernels.py.
"""

from __future__ import annotations

import random
import time

import numpy as np

from .tflite_kernels import KERNEL_SETS, ROUTED, XNNPACK, check_kernels, distinct_sets, model_bytes

PRUNE = 1.5  # a set this much slower than the best after a round is not timed further
TIE_MARGIN = 0.03  # a set must beat an earlier one in KERNEL_SETS by 3% to be named: noise must not flip the choice


def _invoker(path_or_bytes, kernels: str, threads: int):
    from .tflite import interpreter

    it = interpreter(path_or_bytes, threads, kernels=kernels)
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        if np.issubdtype(d["dtype"], np.integer):
            info = np.iinfo(d["dtype"])
            x = rng.integers(info.min, info.max, d["shape"], endpoint=True)
        else:
            x = rng.standard_normal(d["shape"])
        it.set_tensor(d["index"], x.astype(d["dtype"]))
    return it.invoke


def time_kernel_sets(path_or_bytes, threads: int = 1, sets=None, budget_s: float = 2.0, rounds: int = 10,
                     per_visit: int = 3, warmup: int = 2, clock: str = "wall") -> dict[str, float]:
    """{set: fastest run in ms} of the file under each set (default: the distinct ones), interleaved: each round
    visits every set in a shuffled order for `per_visit` runs; stops after `rounds` rounds or once `budget_s` is
    spent (3 rounds at least). A set slower than PRUNE x the best after a round is timed no more (it cannot be
    chosen; its fastest run so far stands): XNNPACK's slow path costs 5-10x, and timing it 3 x 3 times is what
    made the record slow. The fastest run: other tenants of a shared machine only add time. clock "cpu": the
    calling thread's CPU time (1 thread only: the runtime then does all its work on that thread)."""
    raw = model_bytes(path_or_bytes)
    sets = list(sets or distinct_sets(raw))
    for k in sets:
        check_kernels(k)
    if clock not in ("wall", "cpu") or (clock == "cpu" and threads != 1):
        raise ValueError(f"clock {clock!r} with {threads} threads: wall, or cpu with 1 thread")
    now = time.thread_time_ns if clock == "cpu" else time.perf_counter_ns
    runs = {k: _invoker(raw, k, threads) for k in sets}
    for run in runs.values():
        for _ in range(warmup):
            run()
    best = {k: float("inf") for k in sets}
    order, rng, t_end = list(sets), random.Random(0), time.perf_counter() + budget_s
    for r in range(rounds):
        rng.shuffle(order)
        for k in order:
            for _ in range(per_visit):
                t = now()
                runs[k]()
                best[k] = min(best[k], (now() - t) / 1e6)
        order = [k for k in order if best[k] <= PRUNE * min(best.values())]
        if r >= 2 and time.perf_counter() > t_end:
            break
    return best


def pick_fastest(ms: dict[str, float]) -> str:
    """The fastest set of {set: ms}; one later in KERNEL_SETS must beat the current pick by TIE_MARGIN."""
    best = None
    for k in [k for k in KERNEL_SETS if k in ms]:
        if best is None or ms[k] < ms[best] * (1 - TIE_MARGIN):
            best = k
    return best


def fastest_kernels(path_or_bytes, threads: int = 1, budget_s: float = 2.0, clock: str = "wall",
                    **timing) -> tuple[str, dict[str, float]]:
    """(the fastest kernel set for the file on this host, {set: fastest run in ms}) over its distinct sets
    (time_kernel_sets). A set that changes nothing for this file (routing without a >25-tap depthwise conv) is
    given its twin's time, so the record names every set."""
    raw = model_bytes(path_or_bytes)
    ms = time_kernel_sets(raw, threads, budget_s=budget_s, clock=clock, **timing)
    if ROUTED not in ms:
        ms[ROUTED] = ms[XNNPACK]
    return pick_fastest(ms), {k: round(v, 4) for k, v in ms.items()}


def kernels_record(path_or_bytes, threads: int = 1, budget_s: float = 2.0) -> dict:
    """What a manifest entry and the file's metadata say about the kernels on the converting host: the
    recommended set, each set's fastest-run ms, and how they were taken."""
    from importlib.metadata import version

    from posekit.fingerprint import fingerprint_id, host_fingerprint

    t = time.perf_counter()
    name, ms = fastest_kernels(path_or_bytes, threads, budget_s=budget_s, per_visit=1, warmup=1)
    return {"recommended": name, "ms": ms, "statistic": "min", "threads": threads,
            "runtime": f"ai-edge-litert {version('ai-edge-litert')}", "host": fingerprint_id(host_fingerprint()),
            "seconds": round(time.perf_counter() - t, 2),
            "note": "measured on the converting host; the file itself is unchanged (kernel sets: "
                    "runtime/tflite_kernels.py)"}
