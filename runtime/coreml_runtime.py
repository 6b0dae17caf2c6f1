"""The one loader of Core ML's own runtime: `MLModel` with a compute-unit setting, for parity's and predict's runner,
bench and the Core ML LUT. coremltools runs MLModel.predict only on macOS; everywhere else an .mlpackage is run by
runtime/coreml_reference.py (the reference executor of its program)."""

from __future__ import annotations

import platform
from pathlib import Path

from posekit.errors import UserError

# coremltools.ComputeUnit's settings (CPU_AND_NE: the Neural Engine without the GPU, macOS 13+)
COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


def available() -> bool:
    return platform.system() == "Darwin"


def require_macos(what: str = "this command") -> None:
    if not available():
        raise UserError(f"{what} times or runs MLModel.predict, which coremltools runs only on macOS (this is "
                        f"{platform.system()}); run it on a Mac, or use --device host / pixel / note10 here")


def mlmodel(path: str | Path, compute_units: str = "CPU_ONLY"):
    """The .mlpackage / .mlmodel loaded by Core ML itself with `compute_units` (one of COMPUTE_UNITS)."""
    if compute_units not in COMPUTE_UNITS:
        raise UserError(f"compute units {compute_units!r}: expected one of {', '.join(COMPUTE_UNITS)}")
    require_macos(f"loading {path}")
    from posekit.coreml_import import ct

    return ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
