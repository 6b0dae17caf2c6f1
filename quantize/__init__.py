"""quantize: the quantization library the stages call (it imports no stage). Calibration crops (calibration.py: the
one calibration source), TFLite recipes (tflite.py: ai-edge-quantizer static/dynamic/fp16, the global min/max
calibrator, PT2E, the fully-integer checks), int8 candidates, scoring and selection (select.py), Core ML weight
compression (coreml.py), the TensorFlow path (tf.py), quantization-aware training (qat.py, qat_train.py).
`python -m quantize run` is convert's CLI with --targets quantized; `python -m quantize qat` runs QAT."""
