"""The one ONNX Runtime loader of product code that runs an artifact: a CPU InferenceSession of a file or of model
bytes, with its thread count and onnxruntime's own log quieted. (posekit/export_onnx.py runs its fresh export once
as the exporter's own check, below this layer.)"""

from __future__ import annotations

from pathlib import Path

from posekit.errors import UserError

PROVIDERS = ["CPUExecutionProvider"]


def session(path_or_bytes: str | Path | bytes, threads: int | None = None, what: str | None = None):
    """An onnxruntime InferenceSession on the CPU; threads: intra-op threads (None: onnxruntime's default). A file
    onnxruntime cannot load is a UserError naming it (`what`, else the path)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    src = bytes(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    try:
        return ort.InferenceSession(src, so, providers=PROVIDERS)
    except Exception as e:
        name = what or (path_or_bytes if not isinstance(src, bytes) else "ONNX model")
        raise UserError(f"{name}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
