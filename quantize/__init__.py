"""quantize: the quantized artifacts alone (TFLite fp16 / int8 / int8-dynamic, Core ML int8 weights and palettized),
added to artifacts/<model>/manifest.json beside what `python -m convert` wrote."""
