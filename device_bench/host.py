"""Host backend: each part made deployable (`model.deploy.deploy_model`: BN folded, depthwise transposed convs
rewritten, i.e. what ships), converted with litert-torch (`quantize.tflite.ptq_to_tflite`, fp32 or int8 calibrated on
real crops) and timed with the ai_edge_litert Interpreter on one kernel set (runtime/tflite_kernels.py; `lut
--kernels auto`: the fastest for the precision, chosen on a reference net), interleaved across ops.

Converted parts are cached under runs/lut-cache, and the LUT is saved after every chunk of keys, so a killed run
converts and measures only what is missing when started again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.latency import LUT
from posekit.errors import UserError
from posekit.keypoints import REPO

from .lutfile import entry
from .parts import Part
from .timing import round_robin

CACHE = REPO / "runs" / "lut-cache"
CALIB_BATCHES = 8


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("ai-edge-litert", "litert-torch", "ai-edge-quantizer", "torch")}


def deployable(module):
    """The part as convert ships it in a .tflite (BN folded, the head's transposed convs rewritten as the .tflite
    targets rewrite them: model.deploy.TFLITE_REWRITE): what a LUT must time."""
    from model.deploy import TFLITE_REWRITE, deploy_model

    return deploy_model(module, TFLITE_REWRITE)


@contextlib.contextmanager
def quiet_fds():
    """The converter's C++ layers log to fds 1 and 2 directly; keep the progress bar readable (errors still
    surface as exceptions, which carry the converter's message)."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def tflite_for(module, sample, path: Path, precision: str, calib=None) -> Path:
    """Deploy + convert, cached at `path` (written atomically, so a killed conversion leaves nothing)."""
    from quantize.tflite import ptq_to_tflite

    if not path.exists():
        with quiet_fds():
            ptq_to_tflite(deployable(module), sample, path, precision=precision, calib=calib)
    return path


def convert_part(part: Part, precision: str, cache: Path = CACHE, data: str | None = None) -> Path:
    from quantize.calibration import part_batches

    calib = None
    if precision == "int8":  # quantize's one calibration source: real crops (from --data), at the part's shape
        h, w, c = part.in_hwc
        calib = part_batches((c, h, w), CALIB_BATCHES, data)
    from model.deploy import TFLITE_REWRITE, is_depthwise_deconv

    real = f"|crops {data}" if precision == "int8" else ""
    module = part.module()
    if any(is_depthwise_deconv(m) for m in module.modules()):  # a cached part of another rewrite is another graph
        real += f"|deconv {TFLITE_REWRITE}"
    tag = hashlib.sha1(f"{part.key}|{precision}|{sorted(versions().items())}{real}".encode()).hexdigest()[:16]
    path = cache / precision / f"{tag}.tflite"
    try:
        return tflite_for(module, part.sample(), path, precision, calib)
    except UserError as e:
        raise UserError(f"{part.key}: {e}") from None


def runner(path: Path, threads: int, kernels: str) -> Callable[[], None]:
    """A zero-argument call that runs the model once on a fixed random input, on kernel set `kernels`
    (runtime/tflite_kernels.py)."""
    from runtime.tflite import interpreter

    it = interpreter(path, threads=threads, kernels=kernels)
    for d in it.get_input_details():
        x = np.random.default_rng(0).standard_normal(d["shape"]).astype(d["dtype"])
        it.set_tensor(d["index"], x)
    return it.invoke


def measure(lut: LUT, parts: dict[str, Part], precision: str, threads: int, kernels: str = "xnnpack",
            rounds: int = 15, per_visit: int = 5, chunk: int = 12, cache: Path = CACHE,
            clock: str = "wall", data: str | None = None) -> list[str]:
    """Measure every part the LUT lacks, or has with fewer samples than this run takes (a fast first-use pass is
    refined by a full run); saves after each chunk. Returns the keys measured by this run."""
    want = rounds * per_visit
    todo = [k for k in parts if k not in lut.entries
            or (not parts[k].is_identity and lut.entries[k].get("n", 0) < want)]
    done = []
    for k in [k for k in todo if parts[k].is_identity]:  # the identity runs no op: 0 ms by definition
        lut.entries[k] = {"median_ms": 0.0, "min_ms": 0.0, "mean_ms": 0.0, "std_ms": 0.0, "n": 0}
        done.append(k)
    todo = [k for k in todo if not parts[k].is_identity]
    bar = tqdm(total=len(todo), desc=f"lut {lut.device}", unit="key")
    for i in range(0, len(todo), chunk):
        keys = todo[i:i + chunk]
        runners = {}
        for k in keys:
            bar.set_postfix_str(f"convert {k[:40]}")
            runners[k] = runner(convert_part(parts[k], precision, cache, data), threads, kernels)
        bar.set_postfix_str("timing")
        samples = round_robin(runners, rounds=rounds, per_visit=per_visit, seed=i, clock=clock)
        for k in keys:
            lut.entries[k] = entry(samples[k])
        lut.save()
        done += keys
        bar.update(len(keys))
    bar.close()
    if done and not todo:
        lut.save()
    return done
