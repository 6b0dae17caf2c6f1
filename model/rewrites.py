"""Which depthwise-ConvTranspose2d rewrite (model/deploy.py) each artifact format ships, as data without torch: the
conversion-target registry (convert/targets.py) reads it when a stage's `--help` runs, and everything that must match
a shipped .tflite (deploy_model's default) reads TFLITE_REWRITE."""

REWRITES = ("subpixel", "phases", "interleave", "zeros", "dense", "none")
# The rewrite each artifact format ships (convert/targets.py gives each target its format's; all exact): the fastest
# measured, head-only at EfficientPose-A's 16x12x96, 1 thread, one interleaved run (2026-12-03):
# - TFLite (fp32, fp16, int8, int8-dynamic, QAT int8 and the -kp files: every quantized .tflite is made from the fp32
#   one, so they share its graph): "interleave". `python -m convert head-bench --precision all`, XNNPACK: the
#   figures are in model/deploy.py's docstring (fp32, fp16, int8, int8-dynamic).
# - ONNX: "interleave". `head-bench --onnx` (onnxruntime 1.31.1 CPU, 1 thread, the run in model/deploy.py's
#   docstring): plain head 2.12 ms, interleave 1.24 ms (0.59x plain), subpixel 3.29 ms, phases 2.95 ms; all within
#   2e-6 of PyTorch. onnxruntime's own grouped ConvTranspose ("none", a separate one-off run): 0.95x plain.
# - Core ML: "none", Core ML's own grouped conv_transpose. Not timed (MLModel.predict runs on macOS only), so the
#   form with the fewest ops: 11 MIL ops for the head vs 21 for subpixel (interleave's `stack` is not even an op the
#   reference executor implements); runtime/coreml_reference.py runs the fp32 program to 0.0 max difference from
#   the PyTorch ConvTranspose2d (fp16: 1.1e-3 of the range, the same as subpixel's).
# - TensorFlow's TFLite path (onnx2tf, the optional `tf` extra, not in "all"): "subpixel" as before; not re-timed.
FORMAT_REWRITE = {"tflite": "interleave", "onnx": "interleave", "coreml-mlprogram": "none",
                  "coreml-neuralnetwork": "none", "tflite-tf": "subpixel"}
# deploy_model's default, so that what times or simulates a .tflite (device_bench's host LUTs, the closed loop's int8,
# the int8 twins) prices and models the graph the shipped file has.
TFLITE_REWRITE = FORMAT_REWRITE["tflite"]
