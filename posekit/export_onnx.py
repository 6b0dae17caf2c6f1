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


def export_onnx(net, arch, path: Path) -> tuple[Path, list, list, dict]:
    import onnx
    import onnxruntime as ort
    import onnxsim

    h, w = arch.input_size
    x = torch.randn(1, 3, h, w)
    buf = io.BytesIO()
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(net.eval(), (x,), buf, dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=["heatmaps"], do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    with contextlib.redirect_stdout(io.StringIO()):
        simp, ok = onnxsim.simplify(model, check_n=1, certify=False)
    if not ok:
        raise UserError(f"{path}: onnxsim could not validate the simplified model")
    onnx.checker.check_model(simp, full_check=True)
    sess = ort.InferenceSession(simp.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(["heatmaps"], {"image": x.numpy()})[0]
    with torch.no_grad():
        err = float(np.abs(y - net(x).numpy()).max())
    with atomic_path(path) as tmp:
        onnx.save(simp, str(tmp))
    ins = [{"name": "image", "shape": [1, 3, h, w], "dtype": "float32", "layout": "NCHW", "kind": "tensor",
            "quantization": None, "normalization_folded": False}]
    outs = [{"name": "heatmaps", "shape": list(y.shape), "dtype": "float32", "layout": "NCHW", "quantization": None}]
    return path, ins, outs, {"opset": OPSET, "onnxruntime_max_abs_diff": err, "nodes": len(simp.graph.node)}
