"""Import a library while optional dependencies it probes at its own import, for features posenas never uses, are
made to look absent.

- coremltools imports TensorFlow (for its TensorFlow converters; the `tf` extra installs it), scikit-learn (for its
  sklearn converters, which it then disables anyway: the installed version is above its supported range) and torchao
  (for torchao-quantized PyTorch ops). Every conversion here starts from a plain PyTorch network.
- tflite-support's metadata module imports TensorFlow to open files through `tf.io.gfile`; every file here is local.

TensorFlow's import costs ~8-10 s a process, scikit-learn's and torchao's ~3 s together. While the library is first
imported, importing each skipped name fails, so the library takes its "not installed" path (coremltools records it
absent, tflite-support falls back to `open`); the entries are removed right after, so a later real import (the onnx2tf
path imports TensorFlow, litert-torch torchao, coremltools' k-means palettization scikit-learn) works as usual."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def import_skipping(name: str, skip: tuple[str, ...]) -> ModuleType:
    """The module `name`, imported while importing any of `skip` that is not imported yet fails."""
    if name in sys.modules:
        return sys.modules[name]
    blocked = [s for s in skip if s not in sys.modules]
    for s in blocked:
        sys.modules[s] = None  # a None entry makes `import s` raise ImportError
    try:
        return importlib.import_module(name)
    finally:
        for s in blocked:
            if sys.modules.get(s, 0) is None:
                del sys.modules[s]
