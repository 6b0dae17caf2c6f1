"""quantize: the quantization stage. Calibration crops (calibration.py: the one calibration source), TFLite recipes
(tflite.py: ai-edge-quantizer static/dynamic/fp16, the global min/max calibrator, PT2E, the fully-integer checks),
int8 candidates, scoring and selection (select.py), Core ML weight compression (coreml.py). `python -m quantize`
writes the quantized artifacts beside what `python -m convert` wrote."""
