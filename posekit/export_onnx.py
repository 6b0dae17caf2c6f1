"""The ONNX format, shared layer: torch.onnx export (TorchScript exporter, opset 17; the dynamo exporter needs
onnxscript, which is not installed), simplified by onnxsim, checked by onnx.checker and run once in onnxruntime."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

from posekit.errors import UserError
from posekit.io import atomic_path

OPSET = 17


def export_onnx(net, arch, path: Path, output_names=("heatmaps",)) -> tuple[Path, list, list, dict]:
    """net's outputs, named output_names (a decoded net: heatmaps, keypoints), as an ONNX file at `path`."""
    import onnx
    import onnxruntime as ort
    import onnxsim

    h, w = arch.input_size
    x = torch.randn(1, 3, h, w)
    buf = io.BytesIO()
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(net.eval(), (x,), buf, dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=list(output_names), do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    with contextlib.redirect_stdout(io.StringIO()):
        simp, ok = onnxsim.simplify(model, check_n=1, certify=False)
    if not ok:
        raise UserError(f"{path}: onnxsim could not validate the simplified model")
    onnx.checker.check_model(simp, full_check=True)
    sess = ort.InferenceSession(simp.SerializeToString(), providers=["CPUExecutionProvider"])
    ys = sess.run(list(output_names), {"image": x.numpy()})
    with torch.no_grad():
        ref = net(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    err = max(float(np.abs(y - r.numpy()).max()) for y, r in zip(ys, ref))
    with atomic_path(path) as tmp:
        onnx.save(simp, str(tmp))
    ins = [{"name": "image", "shape": [1, 3, h, w], "dtype": "float32", "layout": "NCHW", "kind": "tensor",
            "quantization": None, "normalization_folded": False}]
    outs = [{"name": n, "shape": list(y.shape), "dtype": "float32", "layout": "NCHW" if y.ndim == 4 else "NJ3",
             "quantization": None} for n, y in zip(output_names, ys)]
    return path, ins, outs, {"opset": OPSET, "onnxruntime_max_abs_diff": err, "nodes": len(simp.graph.node)}
