"""Core ML weight compression through coremltools.optimize: int8 weights (linear_quantize_weights, symmetric) and
8- / 6-bit palettized weights (k-means palettize_weights), applied to the fp16 ImageType mlprogram that
posekit/export_coreml.py converts (compressed weights decompress to fp16 compute)."""

from __future__ import annotations

KINDS = {"int8-weights": None, "palettized-8bit": 8, "palettized-6bit": 6}


def compress(mlmodel, kind: str):
    """(compressed MLModel, quantizer description for the manifest) for kind in KINDS."""
    from posekit.coreml_import import ct  # noqa: F401  (first: coremltools without TensorFlow)

    # isort: split
    import coremltools.optimize.coreml as cto

    if kind not in KINDS:
        raise ValueError(f"unknown Core ML weight compression {kind!r} (one of {', '.join(KINDS)})")
    if kind == "int8-weights":
        cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                dtype="int8"))
        return cto.linear_quantize_weights(mlmodel, cfg), "coremltools linear_quantize_weights (int8, symmetric)"
    # k-means (scikit-learn, a dependency for this) places the palette where the weights are
    cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=KINDS[kind]))
    return cto.palettize_weights(mlmodel, cfg), f"coremltools palettize_weights (kmeans, {KINDS[kind]}-bit)"
