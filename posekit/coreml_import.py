"""coremltools without the optional dependencies it probes at import (posekit.skip_unused_deps says which and why):
`from posekit.coreml_import import ct` before any other coremltools import (`from coremltools.proto import ...` would
import the package with them)."""

from __future__ import annotations

from posekit.skip_unused_deps import import_skipping

ct = import_skipping("coremltools", ("tensorflow", "sklearn", "torchao"))

__all__ = ["ct"]
