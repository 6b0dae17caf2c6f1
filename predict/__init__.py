"""Run a converted artifact (TFLite, ONNX, Core ML) on images from the file's own metadata: `python -m predict`."""
