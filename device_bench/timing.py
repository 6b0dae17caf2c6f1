"""Interleaved timing: every op gets a turn each round, so the machine's noise (other jobs, frequency changes)
spreads over all ops instead of landing on whichever ran during a busy minute. The median is kept."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}


def check_clock(clock: str, threads: int) -> str:
    """The clock to time with: 'auto' is the thread's CPU time with 1 thread (all work on the calling thread),
    else wall-clock."""
    from posekit.errors import UserError

    if clock == "auto":
        return "cpu" if threads == 1 else "wall"
    if clock not in CLOCKS:
        raise UserError(f"--clock {clock!r}: expected one of {', '.join(CLOCKS)}")
    if clock == "cpu" and threads != 1:
        raise UserError("--clock cpu counts the calling thread's CPU time: it equals latency only with --threads 1")
    return clock


def round_robin(runners: dict[str, Callable[[], None]], rounds: int = 15, per_visit: int = 5, warmup: int = 3,
                seed: int = 0, desc: str = "timing", leave: bool = False,
                clock: str = "wall") -> dict[str, list[float]]:
    """{name: [ms per call]}: `warmup` untimed calls each, then `rounds` passes over all runners in a shuffled
    order, `per_visit` timed calls per visit. clock "wall" is latency; "cpu" is the calling thread's CPU time
    (single-threaded runtimes only): on a shared machine it leaves out the time other jobs hold the core."""
    now = CLOCKS[clock]
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    rng = random.Random(seed)
    for _ in tqdm(range(rounds), desc=desc, leave=leave, unit="round"):
        rng.shuffle(order)
        for k in order:
            fn = runners[k]
            for _ in range(per_visit):
                t0 = now()
                fn()
                samples[k].append((now() - t0) / 1e6)
    return samples


def summary(samples_ms) -> dict:
    a = np.asarray(samples_ms, dtype=float)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "std_ms": float(a.std()), "min_ms": float(a.min()), "n": int(a.size)}
