"""runtime: everything that loads, runs or reads an artifact, below the stages and above model/: the TFLite loader
(tflite.py) and flatbuffer reader (tflite_flatbuffer.py), the ONNX Runtime loader (onnx.py), the runners of every
format that parity and predict use (runners.py; Core ML's own runtime on macOS, else the reference executor), the
PyTorch twin of a quantized .tflite (tflite_twin.py), the Core ML reference executor (coreml_reference.py with
coreml_ops.py, coreml_nn.py), and the facts embedded in an artifact (metadata.py, tflite_metadata.py)."""
