"""The NeuralNetwork (.mlmodel) half of the Core ML reference executor: layers with their weights inline in the
protobuf (float32, float16 bytes, or n-bit quantized raw bytes with a linear or lookup-table dequantization), and the
image preprocessing (channel scale + per-channel bias) the model declares for its image inputs."""

from __future__ import annotations

from collections import Counter

import numpy as np

from posekit.errors import UserError
from runtime.coreml_ops import (
    UnsupportedOp,
    op_batch_norm,
    op_conv,
    op_conv_transpose,
    op_depth_to_space,
    op_max_pool,
    op_pixel_shuffle,
    op_upsample_nearest_neighbor,
    unpack_bits,
)


def weights(wp, shape=None, what: str = "", axis: int = 0) -> np.ndarray:
    """A WeightParams as float32 of `shape` (fp16 storage is upcast exactly; quantized storage is dequantized, with
    per-channel parameters along `axis`: the output channels, axis 1 for a deconvolution's weights)."""
    shape = [shape] if isinstance(shape, int) else shape
    count = int(np.prod(shape)) if shape is not None else None
    w = _weights(wp, count, what, shape, axis)
    return w if shape is None or not w.size else w.reshape(shape)


def _weights(wp, count, what, shape, axis):
    if len(wp.floatValue):
        return np.asarray(wp.floatValue, np.float32)
    if len(wp.float16Value):
        return np.frombuffer(wp.float16Value, np.float16).astype(np.float32)
    q = wp.quantization
    raw = wp.rawValue or wp.int8RawValue
    if not raw:
        return np.zeros(0, np.float32)
    if not q.numberOfBits:
        raise UnsupportedOp(f"{what}: raw weights without quantization parameters")
    nbits = q.numberOfBits
    if wp.int8RawValue:
        idx = np.frombuffer(wp.int8RawValue, np.int8).astype(np.float32)
    else:
        n = count if count is not None else len(raw) * 8 // nbits
        idx = unpack_bits(np.frombuffer(raw, np.uint8), nbits, n, msb_first=True).astype(np.float32)
    which = q.WhichOneof("QuantizationType")
    if which == "linearQuantization":  # w = scale * q + bias, per output channel or one pair for all
        sc, b = np.asarray(q.linearQuantization.scale, np.float32), np.asarray(q.linearQuantization.bias, np.float32)
        b = b if len(b) else np.zeros_like(sc)
        if len(sc) > 1:
            if shape is None:
                raise UnsupportedOp(f"{what}: per-channel quantized weights of unknown shape")
            bshape = [1] * len(shape)
            bshape[axis] = -1
            return (idx.reshape(shape) * sc.reshape(bshape) + b.reshape(bshape)).ravel()
        return idx * sc[0] + b[0]
    if which == "lookupTableQuantization":
        return np.asarray(q.lookupTableQuantization.floatValue, np.float32)[idx.astype(np.int64)]
    raise UnsupportedOp(f"{what}: weight quantization {which!r}")


def _padding(c):
    """MIL-style conv args from a ConvolutionLayerParams' padding."""
    if c.WhichOneof("ConvolutionPaddingType") == "same":
        return {"pad_type": "same" if c.same.asymmetryMode == 0 else "same_lower"}
    return {"pad_type": "custom", "pad": _border(c.valid)}


def _border(valid) -> list[int]:
    """(top, bottom, left, right) of a ValidPadding's border amounts (a conv's or a pooling's)."""
    amounts = valid.paddingAmounts.borderAmounts
    return [0, 0, 0, 0] if not len(amounts) else [amounts[0].startEdgeSize, amounts[0].endEdgeSize,
                                                   amounts[1].startEdgeSize, amounts[1].endEdgeSize]


def _convolution(layer, xs):
    c = layer.convolution
    k = list(c.kernelSize) or [3, 3]
    groups = c.nGroups or 1
    if c.isDeconvolution:  # (kernelChannels = C_in, C_out / groups, kH, kW)
        w = weights(c.weights, [c.kernelChannels, c.outputChannels // groups, *k], layer.name, axis=1)
    else:  # (C_out, C_in / groups, kH, kW)
        w = weights(c.weights, [c.outputChannels, c.kernelChannels, *k], layer.name)
    a = {"x": xs[0], "weight": w, "strides": list(c.stride) or [1, 1], "dilations": list(c.dilationFactor) or [1, 1],
         "groups": groups, "bias": weights(c.bias, c.outputChannels, layer.name) if c.hasBias else None,
         **_padding(c)}
    if c.isDeconvolution:
        if len(c.outputShape):
            a["output_shape"] = list(c.outputShape)
        return op_conv_transpose(a)
    return op_conv(a)


def _activation(layer, xs):
    p = layer.activation
    kind = p.WhichOneof("NonlinearityType")
    x = xs[0].astype(np.float32)
    if kind == "ReLU":
        return np.maximum(x, 0)
    if kind == "linear":
        return p.linear.alpha * x + p.linear.beta
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if kind == "leakyReLU":
        return np.where(x >= 0, x, p.leakyReLU.alpha * x)
    raise UnsupportedOp(f"{layer.name}: NeuralNetwork activation {kind!r}")


def _batchnorm(layer, xs):
    b, n = layer.batchnorm, layer.batchnorm.channels
    if b.computeMeanVar or b.instanceNormalization:
        raise UnsupportedOp(f"{layer.name}: batchnorm computing its statistics (instance normalization)")
    return op_batch_norm({"x": xs[0], "mean": weights(b.mean, n), "variance": weights(b.variance, n),
                          "gamma": weights(b.gamma, n), "beta": weights(b.beta, n), "epsilon": b.epsilon})


def _reorganize(layer, xs):
    r = layer.reorganizeData
    if r.mode == 1:
        return op_depth_to_space({"x": xs[0], "block_size": r.blockSize})
    if r.mode == 2:
        return op_pixel_shuffle({"x": xs[0], "upscale_factor": r.blockSize})
    raise UnsupportedOp(f"{layer.name}: reorganizeData mode {r.mode} (space_to_depth)")


def _pooling(layer, xs):
    """Max pooling (a BiFPN's bottom-up downsampling): valid with its border amounts, same, or includeLastPixel
    (symmetric pads, ceil mode), as the NeuralNetwork spec defines them."""
    p = layer.pooling
    if p.type != 0 or p.globalPooling:
        raise UnsupportedOp(f"{layer.name}: NeuralNetwork pooling type {p.type} (global {p.globalPooling}): only "
                            f"max pooling")
    a = {"x": xs[0], "kernel_sizes": list(p.kernelSize) or [3, 3], "strides": list(p.stride) or [1, 1]}
    kind = p.WhichOneof("PoolingPaddingType")
    if kind == "same":
        a["pad_type"] = "same" if p.same.asymmetryMode == 0 else "same_lower"
    elif kind == "includeLastPixel":
        ph, pw = (list(p.includeLastPixel.paddingAmounts) + [0, 0])[:2]
        a.update(pad_type="custom", pad=[ph, ph, pw, pw], ceil_mode=True)
    else:
        a.update(pad_type="custom", pad=_border(p.valid) if kind == "valid" else [0, 0, 0, 0])
    return op_max_pool(a)


def _upsample(layer, xs):
    u = layer.upsample
    if u.mode != 0:
        raise UnsupportedOp(f"{layer.name}: NeuralNetwork upsample mode {u.mode} (bilinear): only nearest")
    sh, sw = (list(u.fractionalScalingFactor) or list(u.scalingFactor) or [1, 1])
    return op_upsample_nearest_neighbor({"x": xs[0], "scale_factor_height": sh, "scale_factor_width": sw})


def _add(layer, xs):
    return sum(x.astype(np.float32) for x in xs) + np.float32(layer.add.alpha)


def _multiply(layer, xs):
    out = np.float32(layer.multiply.alpha) if len(xs) == 1 else np.float32(1)
    for x in xs:
        out = out * x.astype(np.float32)
    return out


LAYERS = {
    "convolution": _convolution,
    "activation": _activation,
    "clip": lambda layer, xs: np.clip(xs[0].astype(np.float32), layer.clip.minVal, layer.clip.maxVal),
    "batchnorm": _batchnorm,
    "add": _add,
    "addBroadcastable": lambda layer, xs: xs[0].astype(np.float32) + xs[1].astype(np.float32),
    "multiply": _multiply,
    "reorganizeData": _reorganize,
    "pooling": _pooling,
    "upsample": _upsample,
    "transpose": lambda layer, xs: np.transpose(xs[0], list(layer.transpose.axes)),
    "reshapeStatic": lambda layer, xs: xs[0].reshape(list(layer.reshapeStatic.targetShape)),
    "copy": lambda layer, xs: xs[0],
}


class NeuralNetworkProgram:
    """Runs a NeuralNetwork spec: preprocessing of image inputs, then layers in order (they are topologically
    sorted in the file)."""

    def __init__(self, nn, inputs, outputs):
        self.nn = nn
        self.layers = list(nn.layers)
        self.op_counts = dict(Counter(layer.WhichOneof("layer") for layer in self.layers))
        unknown = sorted(set(self.op_counts) - set(LAYERS))
        if unknown:
            raise UnsupportedOp(f"NeuralNetwork layer(s) the reference executor does not implement: "
                                f"{', '.join(unknown)}")
        self.pre = {}
        for p in nn.preprocessing:
            if p.WhichOneof("preprocessor") != "scaler":
                raise UnsupportedOp(f"NeuralNetwork preprocessing {p.WhichOneof('preprocessor')!r}")
            s = p.scaler
            name = p.featureName or inputs[0]["name"]
            color = next((f.get("color") for f in inputs if f["name"] == name), "RGB")
            bias = [s.grayBias] if color == "GRAYSCALE" else \
                [s.blueBias, s.greenBias, s.redBias] if color == "BGR" else [s.redBias, s.greenBias, s.blueBias]
            self.pre[name] = (np.float32(s.channelScale or 1.0), np.asarray(bias, np.float32).reshape(1, -1, 1, 1))
        self.output_vars = list(outputs)

    def op_order(self):
        return [(layer.WhichOneof("layer"), layer.output[0]) for layer in self.layers]

    def run(self, feeds):
        env = {}
        for name, x in feeds.items():
            x = np.asarray(x, np.float32)
            if name in self.pre:  # Core ML: y = channelScale * x + bias, on the image's pixels
                scale, bias = self.pre[name]
                x = scale * x + bias
            env[name] = x
        for layer in self.layers:
            try:
                xs = [env[i] for i in layer.input]
            except KeyError as e:
                raise UserError(f"layer {layer.name} reads {e.args[0]!r}, which nothing computed") from None
            y = LAYERS[layer.WhichOneof("layer")](layer, xs)
            env[layer.output[0]] = np.asarray(y, np.float32)
        return env
