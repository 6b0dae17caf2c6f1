"""Apple backend (macOS only): each part deployed, converted with coremltools to an ML program, timed with
`MLModel.predict` once per compute-unit setting (CPU_ONLY, CPU_AND_GPU, ALL), interleaved across ops.
One LUT per setting: luts/coreml-cpu_only.json, luts/coreml-cpu_and_gpu.json, luts/coreml-all.json."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.latency import LUT
from runtime import coreml_runtime

from .host import CACHE, deployable
from .lutfile import entry
from .parts import Part
from .timing import round_robin


def require_macos() -> None:
    coreml_runtime.require_macos("the Core ML backend (`python -m device_bench lut --device coreml`, bench of an "
                                 ".mlpackage)")


def device_name(unit: str) -> str:
    return f"coreml-{unit.lower()}"


def convert_part(part: Part, precision: str, cache: Path = CACHE) -> Path:
    import torch

    from posekit.coreml_import import ct

    tag = hashlib.sha1(f"{part.key}|{precision}|{ct.__version__}".encode()).hexdigest()[:16]
    path = cache / f"coreml-{precision}" / f"{tag}.mlpackage"
    if path.exists():
        return path
    from posekit.io import atomic_path

    m = deployable(part.module())
    x = part.sample()
    traced = torch.jit.trace(m, x)
    ml = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=tuple(x.shape))], convert_to="mlprogram",
                    compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    with atomic_path(path, suffix=".mlpackage") as tmp:
        ml.save(str(tmp))
    return path


def measure(luts: dict[str, LUT], parts: dict[str, Part], precision: str = "fp16", rounds: int = 15,
            per_visit: int = 5) -> dict[str, list[str]]:
    """luts: compute unit -> LUT. Each unit's missing keys are timed interleaved; each LUT saved when done."""
    require_macos()

    done = {}
    for unit, lut in luts.items():
        todo = [k for k in parts if k not in lut.entries]
        runners = {}
        for k in tqdm(todo, desc=f"coreml {unit}: convert", unit="key"):
            if parts[k].is_identity:
                lut.entries[k] = {"median_ms": 0.0, "mean_ms": 0.0, "std_ms": 0.0, "n": 0}
                continue
            ml = coreml_runtime.mlmodel(convert_part(parts[k], precision), unit)
            feed = {"x": np.random.default_rng(0).standard_normal(parts[k].sample().shape).astype(np.float32)}
            runners[k] = lambda ml=ml, feed=feed: ml.predict(feed)
        samples = round_robin(runners, rounds=rounds, per_visit=per_visit, desc=f"coreml {unit}")
        for k, s in samples.items():
            lut.entries[k] = entry(s)
        lut.save()
        done[unit] = todo
    return done
