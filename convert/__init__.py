"""convert: a trained pose network -> TFLite (fp32/fp16/int8/int8-dynamic), Core ML (.mlpackage/.mlmodel), ONNX,
and artifacts/<model>/manifest.json describing how to feed each one."""
