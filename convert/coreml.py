"""Core ML artifacts: mlprogram .mlpackage (fp32 / fp16 ImageType, fp32 TensorType), int8 weights and 8- / 6-bit
palettized weights (quantize/coreml.py), and the legacy neuralnetwork .mlmodel. The conversion itself is the shared
layer's (posekit/export_coreml.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from posekit.export_coreml import coreml_program, io_entries, save_mlmodel

_FP16 = {}  # (weights digest, arch) -> the fp16 ImageType program, shared by the compressed variants


def _digest(net, arch) -> str:
    h = hashlib.sha256(json.dumps(arch.to_dict(), sort_keys=True).encode())
    for v in net.state_dict().values():
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _fp16_base(net, arch):
    key = _digest(net, arch)
    if key not in _FP16:
        _FP16.clear()
        _FP16[key] = coreml_program(net, arch, True, "fp16", "mlprogram")
    return _FP16[key]


def export_coreml(net, arch, outdir: Path, kinds, log=print):
    """Yield (path, format, precision, quantizer, inputs, outputs) for each requested Core ML artifact.
    kinds from: fp32, fp16, fp32-tensor, int8-weights, palettized-8bit, palettized-6bit, neuralnetwork (the
    registry's `kind` of each coreml-* target, whose file it writes)."""
    from . import targets

    by_kind = {t.kind: t for t in targets.TARGETS if t.exporter == "coreml"}
    for kind in kinds:
        if kind not in by_kind:
            raise ValueError(f"unknown Core ML artifact {kind!r}")
        t = by_kind[kind]
        image, q = kind != "fp32-tensor", None
        if kind == "fp16":
            m = _fp16_base(net, arch)
        elif kind in ("fp32", "fp32-tensor"):
            m = coreml_program(net, arch, image, "fp32", "mlprogram")
        elif kind == "neuralnetwork":
            m = coreml_program(net, arch, True, "fp32", "neuralnetwork")
        else:  # compressed weights decompress to fp16 compute: start from the fp16 program (converted once)
            from quantize.coreml import compress

            m, q = compress(_fp16_base(net, arch), kind)
        yield save_mlmodel(m, outdir / t.file), t.format, t.precision, q, *io_entries(arch, image, m)
