"""The TensorFlow side of quantize/tf.py, run as its own process (`python -m quantize.tf_worker WORKDIR`) so that
TensorFlow never shares a process with torch: model.onnx -> onnx2tf SavedModel -> tf.lite.TFLiteConverter, fp32
and full-integer int8 (calib.npy: NHWC real crops; float I/O). Writes WORKDIR/tf_<precision>.tflite."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(workdir: str, precisions: list[str]) -> int:
    import numpy as np

    work = Path(workdir)
    os.chdir(work)  # onnx2tf reads its sample images from the working directory (written by quantize/tf.py)
    import onnx2tf
    import tensorflow as tf

    onnx2tf.convert(input_onnx_file_path=str(work / "model.onnx"), output_folder_path=str(work / "saved_model"),
                    non_verbose=True)
    calib = np.load(work / "calib.npy")
    for precision in precisions:
        c = tf.lite.TFLiteConverter.from_saved_model(str(work / "saved_model"))
        if precision == "int8":  # full integer: every op int8, calibrated on the real crops; float input/output
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = lambda: ([x[None]] for x in calib)
            c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            c.inference_input_type = tf.float32
            c.inference_output_type = tf.float32
        (work / f"tf_{precision}.tflite").write_bytes(c.convert())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:] or ["fp32", "int8"]))
