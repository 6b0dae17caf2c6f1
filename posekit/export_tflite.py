"""Float PyTorch -> .tflite through litert-torch: `litert_to_tflite` (fp32 file) and `tflite_bytes` (the bytes, so
that metadata or a quantizer can work on them before they are written). It converts; it does not run a file (that is
runtime/tflite.py). Quantized .tflite files: quantize/tflite.py (ai-edge-quantizer, PT2E) and quantize/tf.py
(onnx2tf).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from posekit.errors import UserError
from posekit.io import atomic_path, first_line

SIGNATURE = "serving_default"  # the signature every .tflite of ours has (runtime/tflite.py runs it)


class SignatureModule(nn.Module):
    """Names the signature's tensors (kwarg in, dict out) and, with nhwc, makes the I/O channels-last (the
    layout TFLite runs in, so the converter folds the transposes instead of leaving them at the edges)."""

    def __init__(self, module: nn.Module, nhwc: bool, output_name: str):
        super().__init__()
        self.module, self.nhwc, self.output_name = module, nhwc, output_name

    def forward(self, image):  # the argument's name is the signature's input name
        x = image
        if self.nhwc and x.ndim == 4:
            x = x.permute(0, 3, 1, 2)
        y = self.module(x)
        if self.nhwc and y.ndim == 4:
            y = y.permute(0, 2, 3, 1)
        return {self.output_name: y}


def to_nhwc(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous() if nhwc and x.ndim == 4 else x


@contextlib.contextmanager
def quiet():
    """litert-torch and the quantizer print progress and absl logs on stdout; keep CLI output readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def tflite_bytes(module: nn.Module, sample: torch.Tensor, quant_config=None) -> bytes:
    """litert-torch conversion of `module` (already a SignatureModule, called as module(image=sample)) to .tflite
    bytes; `quant_config` is litert-torch's QuantConfig for PT2E-quantized modules (quantize/tflite.py)."""
    import litert_torch

    try:
        with quiet():
            edge = litert_torch.convert(module, sample_kwargs={"image": sample}, quant_config=quant_config)
    except Exception as e:  # name the op the converter choked on; the caller adds the module path
        raise UserError(f"litert-torch cannot convert this module: {type(e).__name__}: {first_line(e)}") from e
    return edge.model_content()


def litert_to_tflite(module: nn.Module, sample_input: torch.Tensor, path: str | Path, nhwc: bool = True, *,
                     output_name: str = "heatmaps") -> Path:
    """Convert `module` (eval mode, NCHW input like `sample_input`) to an fp32 .tflite at `path` (atomic).

    The signature is `serving_default` with input `image` and output `output_name`; nhwc: the .tflite's 4-D input
    and output are channels-last. Quantized .tflite files: quantize.tflite.quantized_to_tflite."""
    module = SignatureModule(module.eval(), nhwc, output_name).eval()
    with torch.no_grad():
        model = tflite_bytes(module, to_nhwc(sample_input.detach().float(), nhwc))
    return write_tflite(model, path)


def write_tflite(model: bytes, path) -> Path:
    """Write .tflite bytes atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(model)
    return Path(path)
