"""coremltools, imported without TensorFlow: `from posekit.coreml_import import ct` wherever coremltools is used.

coremltools imports TensorFlow at its own import when TensorFlow is installed (the `tf` extra installs it), only to
offer its TensorFlow converters; every conversion here starts from PyTorch, and that import costs ~8 s per process.
While coremltools is first imported, `import tensorflow` fails, so coremltools records TensorFlow as absent; the
entry is removed right after, and a later `import tensorflow` works as usual."""

from __future__ import annotations

import sys

if "coremltools" not in sys.modules and "tensorflow" not in sys.modules:
    sys.modules["tensorflow"] = None  # a None entry makes `import tensorflow` raise ImportError
    try:
        import coremltools as ct
    finally:
        del sys.modules["tensorflow"]
else:
    import coremltools as ct

__all__ = ["ct"]
