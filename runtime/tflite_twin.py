"""The PyTorch simulation ("twin") of a quantized artifact, built from the artifact's own quantization.

A twin separates two questions a task metric mixes up: did the converter do what it claims (fold, requantize,
keep every op), and what does the quantization itself cost. It runs the network in PyTorch with exactly the
quantization the file declares, derived from the PyTorch weights, never from the file's stored values:

- TFLite (`tflite_twin`): the artifact's op graph executed with torch ops. Every weight comes from the PyTorch
  network (BN folded, deploy-rewritten: model.deploy), rounded with the FILE's per-channel scales and zero points
  (round half away from zero, as TFLite's quantizers do) into the file's integer range; biases become int32 at
  in_scale x w_scale; every int8 activation tensor of the file is fake-quantized with its scale and zero point (a
  fused ReLU/ReLU6 clamps first, as the kernels clamp in the integer domain). Float activations (int8-dynamic
  weights, fp16 weights) stay float, except where a hybrid kernel (int8 weights, float input) quantizes its input
  on the fly (`dynamic_quant`, as TFLite's builtin kernels do). So a file whose stored integers, requantization
  scales or fold disagree with the PyTorch weights computes something its twin does not.
- Core ML (`coreml_weight_check`): the compressed weights (palettes and indices, int8 values and scales) read back
  from the .mlpackage; the twin's weight is the PyTorch weight projected onto the file's palette (nearest entry) or
  rounded with the file's scales, and compared with what the file decompresses to.

Building blocks (also for quantization-aware training): `round_half_away`, `fake_quant` (per tensor or per channel,
optional straight-through gradient), `quantize_weight`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posekit.errors import UserError
from runtime.tflite import interpreter
from runtime.tflite_flatbuffer import operators

__all__ = ["round_half_away", "fake_quant", "dynamic_quant", "quantize_weight", "QParams", "TFLiteTwin", "tflite_twin",
           "compare_outputs", "op_fidelity", "first_difference", "coreml_weight_check", "deploy_weights",
           "tflite_rewrite"]


# ---------------------------------------------------------------------------------------------- primitives
def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero: TFLite's rounding (std::round in its quantize kernels and the
    quantizers), where torch.round rounds ties to even."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def _shape_for(scale: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or scale.numel() == 1:
        return scale.reshape(())
    shape = [1] * x.ndim
    shape[axis] = -1
    return scale.reshape(shape)


def fake_quant(x: torch.Tensor, scale, zero_point=0, qmin: int = -128, qmax: int = 127, axis: int | None = None,
               ste: bool = False) -> torch.Tensor:
    """Quantize then dequantize `x` as TFLite does: q = clamp(round_half_away(x / scale) + zero_point, qmin, qmax),
    returned as (q - zero_point) * scale. scale/zero_point: scalars, or per-channel along `axis`.
    ste: straight-through estimator (identity gradient inside the clamp range), for quantization-aware training."""
    s = _shape_for(torch.as_tensor(scale, dtype=x.dtype, device=x.device), x, axis)
    z = _shape_for(torch.as_tensor(zero_point, dtype=x.dtype, device=x.device), x, axis)
    q = torch.clamp(round_half_away(x / s) + z, qmin, qmax)
    y = (q - z) * s
    if ste:
        lo, hi = (qmin - z) * s, (qmax - z) * s
        inside = (x >= lo) & (x <= hi)
        return torch.where(inside, x + (y - x).detach(), y.detach())
    return y


def dynamic_quant(x: torch.Tensor, qmin: int = -128, qmax: int = 127) -> torch.Tensor:
    """What a TFLite hybrid kernel (int8 weights, float activations) does to its input: asymmetric int8 quantization
    over the whole tensor with a range that includes 0 (tensor_utils::AsymmetricQuantizeFloats), dequantized.
    Measured: the twin then matches TFLite's builtin hybrid kernels to ~140 dB."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if lo == hi:
        return torch.zeros_like(x)
    scale = (hi - lo) / (qmax - qmin)
    zp = float(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return fake_quant(x, scale, zp, qmin, qmax)


def quantize_weight(w: torch.Tensor, scale, zero_point=0, axis: int | None = 0, qmin: int = -127,
                    qmax: int = 127) -> torch.Tensor:
    """The integers a weight tensor is stored as (float tensor of integer values), TFLite rounding; symmetric
    int8 weights use [-127, 127]."""
    s = _shape_for(torch.as_tensor(scale, dtype=w.dtype), w, axis)
    z = _shape_for(torch.as_tensor(zero_point, dtype=w.dtype), w, axis)
    return torch.clamp(round_half_away(w / s) + z, qmin, qmax)


@dataclass
class QParams:
    """A tensor's quantization as the file declares it: scales, zero points, quantized axis, integer range."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int
    qmin: int
    qmax: int

    def fq(self, x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
        return fake_quant(x, torch.from_numpy(self.scale), torch.from_numpy(self.zero_point), self.qmin, self.qmax,
                          (self.axis if axis is None else axis) if self.scale.size > 1 else None)


_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1)}


# ---------------------------------------------------------------------------------------------- the PyTorch side
def deploy_weights(net: nn.Module, deconv: str | None = None) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d / ConvTranspose2d of the deploy graph (model.deploy: BN folded, depthwise
    deconvs rewritten by `deconv`, default what a .tflite ships), in the order the forward pass runs them."""
    from model.deploy import TFLITE_REWRITE, deploy_model
    from model.hooks import forward_with_hooks

    dep = deploy_model(net, deconv or TFLITE_REWRITE).eval()
    names = {m: n for n, m in dep.named_modules()}
    order: list = []
    arch = getattr(dep, "arch", None) or getattr(net, "arch", None)
    size = tuple(arch.input_size) if arch is not None else (64, 48)
    forward_with_hooks(dep, torch.zeros(1, 3, *size),
                       [(m, lambda mod, a, y: order.append(mod) if mod not in order else None)
                        for m in dep.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    return [(names[m], m) for m in order]


# ---------------------------------------------------------------------------------------------- TFLite graph
WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")
# The deconv rewrites a .tflite of ours may hold: what ships now (model.deploy.TFLITE_REWRITE), then what shipped
# before it (files converted before the change still check).
TFLITE_FORMS = ("interleave", "subpixel")


def tflite_rewrite(net: nn.Module, path: str | Path) -> str:
    """The deconv rewrite (model.deploy) the .tflite at `path` was made from `net` with: the first of TFLITE_FORMS
    whose deploy graph has the file's conv ops (count, then weight shapes in order)."""
    ops = [op for op in operators(Path(path)) if op.name in WEIGHTED]
    for how in TFLITE_FORMS:
        if len(deploy_weights(net, how)) == len(ops):
            return how
    return TFLITE_FORMS[0]  # none fits: the twin names the mismatch


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) of one spatial dim."""
    eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def _nearest_index(out: int, size: int, opts: dict) -> torch.Tensor:
    """The input index each output pixel of TFLite's RESIZE_NEAREST_NEIGHBOR reads (its reference kernel)."""
    i = torch.arange(out, dtype=torch.float64)
    if opts.get("AlignCorners"):
        src = torch.round(i * ((size - 1) / (out - 1) if out > 1 else 0.0))
    else:
        src = torch.floor((i + (0.5 if opts.get("HalfPixelCenters") else 0.0)) * (size / out))
    return src.clamp(0, size - 1).long()


def _act(x: torch.Tensor, code: int) -> torch.Tensor:
    # ActivationFunctionType: NONE 0, RELU 1, RELU_N1_TO_1 2, RELU6 3
    if code == 1:
        return torch.relu(x)
    if code == 2:
        return torch.clamp(x, -1, 1)
    if code == 3:
        return torch.clamp(x, 0, 6)
    if code != 0:
        raise UserError(f"fused activation {code} is not simulated")
    return x


class TFLiteTwin(nn.Module):
    """A .tflite's graph run in PyTorch with the PyTorch network's weights and the file's quantization.

    `twin(x)` takes what the interpreter's input takes (NHWC as the file declares; float, or the int8 values of an
    int8-input model) and returns the output tensor as float (an int8 output dequantized). `quantized=False`
    runs the same graph with the float weights and no fake-quantization: it must reproduce PyTorch (a check of the
    graph itself: a dropped or extra op shows up there).
    Attributes: `output_step` (the output's quantization step, None for a float output), `weights` (per weighted op:
    tensor name, PyTorch module, fraction of the file's stored integers the twin reproduces), `keep` (every tensor
    of the last call when `keep_all`)."""

    def __init__(self, net: nn.Module, path: str | Path, quantized: bool = True):
        super().__init__()
        self.path, self.quantized = Path(path), quantized
        try:
            it = interpreter(self.path, kernels="builtin")
        except Exception as e:
            raise UserError(f"{self.path}: TFLite cannot load it: {str(e).splitlines()[0]}") from None
        self.details = {d["index"]: d for d in it.get_tensor_details()}
        self.ops = operators(self.path)
        self.input_index = int(it.get_input_details()[0]["index"])
        self.output_index = int(it.get_output_details()[0]["index"])
        self.consts: dict[int, np.ndarray] = {}
        produced = {t for op in self.ops for t in op.outputs}
        for idx in self.details:
            if idx not in produced and idx != self.input_index:
                try:
                    self.consts[idx] = np.array(it.get_tensor(idx))
                except ValueError:  # a tensor without data (e.g. a scratch tensor)
                    pass
        self.qparams = {i: self._qparams(d) for i, d in self.details.items()}
        self._bind_weights(net)
        out_q = self.qparams.get(self._output_source())
        self.output_step = float(out_q.scale.ravel()[0]) if out_q is not None and out_q.scale.size == 1 else None
        self.keep_all, self.keep = False, {}

    # ---- file reading
    def _qparams(self, d) -> QParams | None:
        q = d.get("quantization_parameters") or {}
        scales = np.asarray(q.get("scales", []), np.float32)
        dtype = np.dtype(d["dtype"]).name
        if not scales.size or dtype not in _RANGES:
            return None
        lo, hi = _RANGES[dtype]
        return QParams(scales, np.asarray(q.get("zero_points", np.zeros_like(scales)), np.float32),
                       int(q.get("quantized_dimension", 0)), lo, hi)

    def _output_source(self) -> int:
        """The tensor whose quantization the output carries: the input of a final DEQUANTIZE, else the output."""
        for op in self.ops:
            if op.name == "DEQUANTIZE" and op.outputs[0] == self.output_index:
                return op.inputs[0]
        return self.output_index

    def _const_source(self, t: int) -> int:
        """A weight fed through DEQUANTIZE (fp16 or int8 weights with float compute): the stored constant."""
        for op in self.ops:
            if op.outputs and op.outputs[0] == t and op.name == "DEQUANTIZE" and op.inputs[0] in self.consts:
                return op.inputs[0]
        return t

    def _bind_weights(self, net):
        """Match each weighted op to the PyTorch deploy graph's conv in execution order (shapes must agree) and
        precompute its twin weight and bias."""
        mods = deploy_weights(net, tflite_rewrite(net, self.path))
        weighted = [op for op in self.ops if op.name in WEIGHTED]
        if len(weighted) != len(mods):
            raise UserError(f"{self.path}: {len(weighted)} conv ops, the PyTorch deploy graph has {len(mods)} convs "
                            f"(is this artifact made from this network?)")
        self.weights, self._w = [], {}
        pool = list(mods)  # the PyTorch convs not bound yet, in execution order

        def file_layout(m, op):
            w = m.weight.detach().float()
            if isinstance(m, nn.ConvTranspose2d) or op.name == "DEPTHWISE_CONV_2D":
                return w.permute(1, 2, 3, 0)  # (I, O, kh, kw) -> OHWI; depthwise (C*M, 1, kh, kw) -> 1HW(C*M)
            return w.permute(0, 2, 3, 1)  # OIHW -> OHWI

        for op in weighted:
            wi = op.inputs[1]  # TRANSPOSE_CONV: (output_shape, weights, input, bias); convs: (input, weights, bias)
            src = self._const_source(wi)
            stored = self.consts.get(src)
            name, m = pool[0]
            same = [(n, c) for n, c in pool if stored is not None and tuple(file_layout(c, op).shape) == stored.shape]
            if len(same) > 1:  # a DAG (a BiFPN neck) may run in another order than the file's: bind by value
                ref = self._value(src, {})
                name, m = min(same, key=lambda nc: float((file_layout(nc[1], op) - ref).abs().max()))
            elif same:
                name, m = same[0]
            pool.remove((name, m))
            tfw = file_layout(m, op)
            if stored is None or tuple(stored.shape) != tuple(tfw.shape):
                raise UserError(f"{self.path}: op {op.index} {op.name} weight {self.details[wi]['name'][:80]!r} "
                                f"shape {None if stored is None else list(stored.shape)} does not match PyTorch "
                                f"{name} {list(tfw.shape)}")
            q = self.qparams.get(src)
            info = {"op": op.index, "op_name": op.name, "tensor": self.details[src]["name"], "module": name,
                    "dtype": np.dtype(self.details[src]["dtype"]).name}
            if self.quantized and q is not None:
                axis = q.axis if q.scale.size > 1 else None
                ints = quantize_weight(tfw, torch.from_numpy(q.scale), torch.from_numpy(q.zero_point), axis,
                                       -127 if q.qmin == -128 else q.qmin, q.qmax)
                stored_t = torch.from_numpy(stored.astype(np.float32))
                # a stored integer agrees when it is the twin's, or as near w / scale (+ zp) as it to float rounding:
                # a quantizer rounding a tie (x.5) the other way is not a converter error
                r = tfw / _shape_for(torch.from_numpy(q.scale), tfw, axis) + \
                    _shape_for(torch.from_numpy(q.zero_point), tfw, axis)
                info["stored_equal"] = float(((ints == stored_t) | ((r - stored_t).abs() <= 0.5 + 1e-3)).float().mean())
                tw = (ints - _shape_for(torch.from_numpy(q.zero_point), tfw, axis)) * \
                    _shape_for(torch.from_numpy(q.scale), tfw, axis)
            elif self.quantized and stored.dtype == np.float16:
                tw = tfw.half().float()  # fp16 weights
                info["stored_equal"] = float((tw.numpy().astype(np.float16) == stored).mean())
            else:
                tw = tfw
            bias = None
            bi = op.inputs[3] if op.name == "TRANSPOSE_CONV" and len(op.inputs) > 3 else \
                op.inputs[2] if op.name != "TRANSPOSE_CONV" and len(op.inputs) > 2 else -1
            if bi >= 0:
                b = m.bias.detach().float() if m.bias is not None else torch.zeros(tfw.shape[-1 if op.name ==
                                                                                         "DEPTHWISE_CONV_2D" else 0])
                bq = self.qparams.get(self._const_source(bi))
                xq = self.qparams.get(op.inputs[2] if op.name == "TRANSPOSE_CONV" else op.inputs[0])
                if self.quantized and bq is not None and q is not None and xq is not None:
                    # int32 bias at in_scale x w_scale (the scale the kernel's accumulator has)
                    bs = torch.from_numpy(xq.scale[0] * q.scale).float()
                    b = torch.clamp(round_half_away(b / bs), *_RANGES["int32"]) * bs
                elif self.quantized and self.consts.get(self._const_source(bi)) is not None and \
                        self.consts[self._const_source(bi)].dtype == np.float16:
                    b = b.half().float()
                bias = b
            self._w[op.index] = (tw, bias)
            self.weights.append(info)

    # ---- execution
    def _fq(self, t: int, x: torch.Tensor) -> torch.Tensor:
        q = self.qparams.get(t)
        if not self.quantized or q is None or np.dtype(self.details[t]["dtype"]) == np.int32:
            return x
        return q.fq(x)

    def _hybrid_input(self, op, x: torch.Tensor, weight: int) -> torch.Tensor:
        """A float input to an op with int8 weights (a hybrid kernel) is quantized on the fly by the runtime."""
        if self.quantized and self.qparams.get(self._const_source(op.inputs[weight])) is not None and \
                self.qparams.get(op.inputs[2 if op.name == "TRANSPOSE_CONV" else 0]) is None:
            return dynamic_quant(x)
        return x

    def _operands(self, op, x):
        """(input, weight, bias, options, strides) of a conv-like op, a hybrid kernel's float input quantized."""
        o = op.options
        return (self._hybrid_input(op, x, 1), *self._w[op.index], o, (o.get("StrideH", 1), o.get("StrideW", 1)))

    def _conv(self, op, x):
        x, w, b, o, (sh, sw) = self._operands(op, x)
        dh, dw = o.get("DilationHFactor", 1), o.get("DilationWFactor", 1)
        xc = x.permute(0, 3, 1, 2)
        if op.name == "DEPTHWISE_CONV_2D":
            wt = w.permute(3, 0, 1, 2)  # 1HW(C*M) -> (C*M, 1, kh, kw)
            groups = xc.shape[1]
        else:
            wt = w.permute(0, 3, 1, 2)  # OHWI -> OIHW
            groups = xc.shape[1] // wt.shape[1]
        kh, kw = wt.shape[2:]
        if o.get("Padding", 1) == 0:  # SAME
            (t, bo), (le, r) = _same_pad(xc.shape[2], kh, sh, dh), _same_pad(xc.shape[3], kw, sw, dw)
            xc = F.pad(xc, (le, r, t, bo), value=self._pad_value(op.inputs[0]))
        y = F.conv2d(xc, wt, b, (sh, sw), 0, (dh, dw), groups)
        return _act(y, o.get("FusedActivationFunction", 0)).permute(0, 2, 3, 1)

    def _transpose_conv(self, op, x):
        x, w, b, o, (sh, sw) = self._operands(op, x)
        out_shape = [int(v) for v in self.consts[op.inputs[0]]]
        y = F.conv_transpose2d(x.permute(0, 3, 1, 2), w.permute(3, 0, 1, 2), None, (sh, sw))
        th, tw = y.shape[2] - out_shape[1], y.shape[3] - out_shape[2]
        y = y[:, :, th // 2: th // 2 + out_shape[1], tw // 2: tw // 2 + out_shape[2]]
        if b is not None:
            y = y + b.view(1, -1, 1, 1)
        return _act(y, o.get("FusedActivationFunction", 0)).permute(0, 2, 3, 1)

    def _pad_value(self, t: int) -> float:
        return 0.0  # TFLite pads a quantized tensor with its zero point: real value 0

    def _value(self, t: int, env) -> torch.Tensor:
        if t in env:
            return env[t]
        if t in self.consts:
            c = self.consts[t]
            q = self.qparams.get(t)
            v = torch.from_numpy(c.astype(np.float32))
            if q is not None and c.dtype != np.int32:
                v = (v - _shape_for(torch.from_numpy(q.zero_point), v, q.axis)) * \
                    _shape_for(torch.from_numpy(q.scale), v, q.axis)
            return v
        raise UserError(f"{self.path}: tensor {t} is read before any op writes it")

    def _run_op(self, op, env) -> torch.Tensor:
        n = op.name
        v = lambda i: self._value(op.inputs[i], env)  # noqa: E731
        if n in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            return self._conv(op, v(0))
        if n == "TRANSPOSE_CONV":
            return self._transpose_conv(op, v(2))
        if n in ("QUANTIZE", "DEQUANTIZE"):
            return v(0)  # values are carried dequantized; the output's fake-quant does the rest
        if n in ("PAD", "PADV2"):
            p = self.consts[op.inputs[1]].astype(int)  # (rank, 2), outermost dim first
            return F.pad(v(0), tuple(int(x) for pair in p[::-1] for x in pair))
        if n in ("ADD", "SUB", "MUL"):
            a, b = v(0), v(1)
            y = a + b if n == "ADD" else a - b if n == "SUB" else a * b
            return _act(y, op.options.get("FusedActivationFunction", 0))
        if n == "RESHAPE":
            return v(0).reshape([int(d) for d in self.details[op.outputs[0]]["shape"]])
        if n == "TRANSPOSE":
            return v(0).permute(*[int(d) for d in self.consts[op.inputs[1]]])
        if n == "CONCATENATION":
            return _act(torch.cat([self._value(i, env) for i in op.inputs], op.options.get("Axis", 0)),
                        op.options.get("FusedActivationFunction", 0))
        if n == "MEAN":
            axes = [int(a) for a in np.ravel(self.consts[op.inputs[1]])]
            return v(0).mean(axes, keepdim=bool(op.options.get("KeepDims", False)))
        if n == "RELU":
            return torch.relu(v(0))
        if n == "RELU6":
            return torch.clamp(v(0), 0, 6)
        if n == "LOGISTIC":
            return torch.sigmoid(v(0))
        if n == "HARD_SWISH":
            return F.hardswish(v(0))
        if n == "DEPTH_TO_SPACE":
            b = op.options.get("BlockSize", 2)
            x = v(0)
            nb, h, w, c = x.shape
            return x.reshape(nb, h, w, b, b, c // b // b).permute(0, 1, 3, 2, 4, 5).reshape(nb, h * b, w * b, -1)
        if n == "MAX_POOL_2D":  # NHWC; a max commutes with the monotone requantization, so float max is exact
            x = v(0).permute(0, 3, 1, 2)
            o = op.options
            k, s = (o["FilterHeight"], o["FilterWidth"]), (o["StrideH"], o["StrideW"])
            if op.options.get("Padding", 1) == 0:  # SAME
                (t, b), (lft, r) = (_same_pad(x.shape[i + 2], k[i], s[i], 1) for i in (0, 1))
                x = F.pad(x, (lft, r, t, b), value=float("-inf"))
            y = F.max_pool2d(x, k, s).permute(0, 2, 3, 1)
            return _act(y, op.options.get("FusedActivationFunction", 0))
        if n == "RESIZE_NEAREST_NEIGHBOR":  # NHWC, to the constant size; TFLite's index rule per option
            x = v(0)
            (oh, ow), (h, w) = (int(d) for d in self.consts[op.inputs[1]]), x.shape[1:3]
            idx = [_nearest_index(o, i, op.options) for o, i in ((oh, h), (ow, w))]
            return x[:, idx[0]][:, :, idx[1]]
        raise UserError(f"{self.path}: op {n} (op {op.index}) is not simulated by runtime.tflite_twin")

    @torch.no_grad()
    def forward(self, x) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x)).float()
        batch = int(self.details[self.input_index]["shape"][0]) or 1
        if x.shape[0] != batch:  # the graph's shapes (RESHAPE) are the file's: run it a file batch at a time
            return torch.cat([self.forward(x[i:i + batch]) for i in range(0, x.shape[0], batch)])
        inq = self.qparams.get(self.input_index)
        if self.details[self.input_index]["dtype"] != np.float32 and inq is not None:  # int8 input: dequantize
            x = (x - float(inq.zero_point[0])) * float(inq.scale[0])
        env = {self.input_index: x}
        for op in self.ops:
            y = self._run_op(op, env)
            env[op.outputs[0]] = self._fq(op.outputs[0], y)
        self.keep = env if self.keep_all else {}
        return env[self.output_index]


def tflite_twin(net: nn.Module, path: str | Path, quantized: bool = True) -> TFLiteTwin:
    """The twin of a .tflite made from `net` (the PyTorch network, before or after model.deploy)."""
    return TFLiteTwin(net, path, quantized).eval()


def compare_outputs(artifact: np.ndarray, twin: np.ndarray, step: float | None) -> dict:
    """{'sqnr_db': the twin as signal, the artifact's difference from it as noise; 'in_step': the fraction of output
    values within one quantization step of the twin's (None for a float output); 'max_steps'}."""
    a, t = np.asarray(artifact, np.float64), np.asarray(twin, np.float64)
    if a.shape != t.shape:
        raise UserError(f"artifact output {a.shape} and twin output {t.shape} differ in shape")
    noise = float(((a - t) ** 2).sum())
    sq = float("inf") if noise == 0 else 10 * np.log10(float((t**2).sum()) / noise)
    out = {"sqnr_db": sq, "in_step": None, "max_steps": None}
    if step:
        steps = np.abs(a - t) / step
        out["in_step"] = float((steps <= 1 + 1e-3).mean())
        out["max_steps"] = float(steps.max())
    return out


def _dequant(v: np.ndarray, q: QParams | None) -> np.ndarray:
    if q is None or v.dtype.kind == "f" or q.scale.size != 1:
        return np.asarray(v, np.float32)
    return (v.astype(np.float32) - q.zero_point[0]) * q.scale[0]


def op_fidelity(twin: TFLiteTwin, x: np.ndarray, tol_steps: float = 1.0) -> dict:
    """Every op of the file as TFLite's builtin kernels compute it (all tensors kept) against the twin's same op fed
    the runtime's own input tensors: a converter error shows at the op where it enters, and the requantization
    rounding the twin does not model (one step, on a fraction of a percent of values) cannot compound through a
    deep network as it does end to end.

    Returns {'ops': [{op, op_name, tensor, torch_module, sqnr_db, in_step, max_steps}], 'min_sqnr_db', 'min_in_step'
    (None without int8 outputs), 'worst': the op with the lowest in-step fraction (else SQNR)}; in_step per op: the
    fraction of its int8 values within `tol_steps` quantization steps of the twin's."""
    it = interpreter(twin.path, kernels="builtin", preserve_all_tensors=True)
    acc: dict[int, list] = {}
    for k in range(len(x)):
        it.set_tensor(twin.input_index, np.ascontiguousarray(x[k:k + 1]))
        it.invoke()
        for op in twin.ops:
            env = {i: torch.from_numpy(_dequant(it.get_tensor(i), twin.qparams.get(i)))
                   for i in op.inputs if i >= 0 and i not in twin.consts}
            with torch.no_grad():
                y = twin._fq(op.outputs[0], twin._run_op(op, env)).numpy().astype(np.float64)  # noqa: SLF001
            t = op.outputs[0]
            q = twin.qparams.get(t)
            r = _dequant(it.get_tensor(t), q).astype(np.float64)
            a = acc.setdefault(op.index, [0.0, 0.0, 0, 0, 0.0])
            a[0] += float((y**2).sum())
            a[1] += float(((r - y) ** 2).sum())
            if q is not None and q.scale.size == 1 and np.dtype(twin.details[t]["dtype"]) != np.float32:
                steps = np.abs(r - y) / q.scale[0]
                a[2] += int((steps <= tol_steps + 1e-3).sum())
                a[3] += steps.size
                a[4] = max(a[4], float(steps.max()))
    weights = {w["op"]: w for w in twin.weights}
    ops = []
    for op in twin.ops:
        sig, noise, ins, n, mx = acc[op.index]
        ops.append({"op": op.index, "op_name": op.name, "tensor": twin.details[op.outputs[0]]["name"][:120],
                    "torch_module": weights.get(op.index, {}).get("module"),
                    "sqnr_db": float("inf") if noise == 0 else (10 * np.log10(sig / noise) if sig > 0 else -np.inf),
                    "in_step": ins / n if n else None, "max_steps": mx if n else None,
                    "stored_weights_equal": weights.get(op.index, {}).get("stored_equal")})
    steps = [o for o in ops if o["in_step"] is not None]
    worst = min(steps, key=lambda o: (o["in_step"], o["sqnr_db"])) if steps else min(ops, key=lambda o: o["sqnr_db"])
    return {"ops": ops, "min_sqnr_db": min(o["sqnr_db"] for o in ops),
            "min_in_step": min(o["in_step"] for o in steps) if steps else None, "worst": worst}


def first_difference(twin: TFLiteTwin, x: np.ndarray, max_steps: float = 1.0, min_sqnr_db: float = 40.0) -> dict | None:
    """The first op (in execution order) whose output, as TFLite's builtin kernels compute it, differs from the
    twin's same op (fed the runtime's inputs) by more than `max_steps` quantization steps on >1% of its values, or
    by less than `min_sqnr_db`: where a converter or requantization error enters. None when every op agrees."""
    for o in op_fidelity(twin, x[:1], max_steps)["ops"]:
        if (o["in_step"] is not None and o["in_step"] < 0.99) or o["sqnr_db"] < min_sqnr_db:
            return {**o, "fraction_off": 1 - o["in_step"] if o["in_step"] is not None else None}
    return None


# ---------------------------------------------------------------------------------------------- Core ML
def _coreml_compressed(path: Path) -> list[dict]:
    """Every compressed weight of an ML program, in program order: {'name', 'kind' ('lut' | 'affine'),
    'dense' (what the file decompresses to), and the representable values: 'lut' (flat palette) or
    'scale'/'zero_point'/'axis'/'qrange'}."""
    from runtime.coreml_reference import CoreMLProgram, UnsupportedOp

    prog = CoreMLProgram(path)
    impl = getattr(prog, "_impl", None)
    if not hasattr(impl, "block"):
        raise UserError(f"{path}: not an ML program: no compressed weights to read back")
    out = []
    for op in impl.block.operations:
        if op.type not in ("constexpr_lut_to_dense", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"):
            continue
        a = impl._args(op, impl.consts)  # noqa: SLF001 (runtime.coreml_reference's own argument reader)
        dense = np.asarray(impl.consts[op.outputs[0].name], np.float32)
        e = {"name": op.outputs[0].name, "dense": dense}
        if op.type == "constexpr_lut_to_dense":
            lut = np.asarray(a["lut"], np.float32)
            if "shape" not in a and lut.reshape(-1, lut.shape[-2] if lut.ndim >= 2 else lut.size).shape[0] != 1:
                raise UnsupportedOp(f"{path}: {e['name']}: grouped palettes are not simulated")
            e.update(kind="lut", lut=lut.ravel())
        elif op.type == "constexpr_affine_dequantize":
            q = np.asarray(a["quantized_data"])
            e.update(kind="affine", scale=np.asarray(a["scale"], np.float32),
                     zero_point=np.asarray(a["zero_point"], np.float32), axis=int(a["axis"]),
                     qrange=(int(np.iinfo(q.dtype).min), int(np.iinfo(q.dtype).max)))
        else:
            data, scale = np.asarray(a["data"]), np.asarray(a["scale"], np.float32)
            if scale.size != scale.shape[0] or scale.ndim != data.ndim:
                raise UnsupportedOp(f"{path}: {e['name']}: blockwise scales are not simulated")
            off = a.get("offset")
            e.update(kind="affine", scale=scale.ravel(),
                     zero_point=np.zeros(scale.shape[0], np.float32) if off is None else
                     np.asarray(off, np.float32).ravel(), axis=0,
                     qrange=(int(np.iinfo(data.dtype).min), int(np.iinfo(data.dtype).max)))
        out.append(e)
    return out


TIE_TOL = 1e-3  # x the tensor's max |w|: see coreml_weight_check


def coreml_weight_check(net: nn.Module, path: str | Path) -> dict:
    """Do the .mlpackage's compressed weights decompress to the twin's (the PyTorch weights projected onto the
    file's palette, or rounded with its scales)?

    Each compressed tensor is matched to the PyTorch deploy graph's conv of the same shape (in order). A weight
    agrees when the file's decompressed value is one of the two representable values (palette entries, or integer
    steps of the file's scale) that bracket the PyTorch weight, to TIE_TOL x the tensor's max |w|: the nearest one
    (the twin's), or the other when the compressor rounds the other way without being wrong. That covers the palette
    or scales stored in fp16 (relative error 2^-11 < 1e-3 of the largest weight), the weights rounded to fp16
    before compression (fp16 programs), a weight on a midpoint, and coremltools computing uniform-palette indices in
    fp16 arithmetic (measured: up to half a step past the midpoint). A wrong palette entry, index or scale moves a
    weight off its bracket.
    Returns {'weights_exact': fraction of compressed weight values that agree, 'tensors': [...per tensor...],
    'worst': the tensor with the most disagreements}."""
    path = Path(path)
    comp = _coreml_compressed(path)
    if not comp:
        raise UserError(f"{path}: no compressed weights found")
    from model.rewrites import FORMAT_REWRITE

    def placed(mods) -> int:  # compressed tensors that find a conv of their shape, in order
        shapes, pos, n = [tuple(m.weight.shape) for _, m in mods], 0, 0
        for e in comp:
            j = next((k for k in range(pos, len(shapes)) if shapes[k] == e["dense"].shape), None)
            if j is not None:
                pos, n = j + 1, n + 1
        return n

    # the graph convert ships as Core ML first; a file converted before (sub-pixel head) is read as that graph
    forms = [FORMAT_REWRITE["coreml-mlprogram"], *(f for f in TFLITE_FORMS if f != FORMAT_REWRITE["coreml-mlprogram"])]
    graphs = [deploy_weights(net, how) for how in forms]
    mods = max(graphs, key=placed)  # max keeps the first of equals
    cands = [m.weight.detach().float().numpy() for _, m in mods]
    tensors, total, good, pos = [], 0, 0, 0
    for e in comp:
        d = e["dense"]
        j = next((k for k in range(pos, len(cands)) if cands[k].shape == d.shape), None)
        total += d.size
        if j is None:
            tensors.append({"tensor": e["name"], "module": None, "agree": 0.0, "count": int(d.size),
                            "note": f"no PyTorch conv weight of shape {list(d.shape)} after the previous match"})
            continue
        pos = j + 1
        w = cands[j].astype(np.float64)
        atol = TIE_TOL * float(np.abs(w).max() or 1.0)
        if e["kind"] == "lut":
            u = np.unique(e["lut"].astype(np.float64))
            i = np.searchsorted(u, w)
            lo, hi = u[np.clip(i - 1, 0, u.size - 1)], u[np.clip(i, 0, u.size - 1)]
            twin = np.where(np.abs(w - lo) <= np.abs(w - hi), lo, hi)
        else:
            shape = [1] * w.ndim
            shape[e["axis"]] = -1
            sc = e["scale"].astype(np.float64).reshape(shape if e["scale"].size > 1 else ())
            zp = e["zero_point"].astype(np.float64).reshape(shape if e["zero_point"].size > 1 else ())
            r = w / sc + zp
            qlo, qhi = np.clip(np.floor(r), *e["qrange"]), np.clip(np.ceil(r), *e["qrange"])
            lo, hi = (qlo - zp) * sc, (qhi - zp) * sc
            q = np.clip(np.sign(r - zp) * np.floor(np.abs(r - zp) + 0.5) + zp, *e["qrange"])
            twin = (q - zp) * sc
        ok = (np.abs(d - lo) <= atol) | (np.abs(d - hi) <= atol)
        n_ok = int(ok.sum())
        tensors.append({"tensor": e["name"], "module": mods[j][0], "kind": e["kind"], "agree": n_ok / d.size,
                        "count": int(d.size), "nearest": float((np.abs(d - twin) <= atol).mean()),
                        "max_abs_diff": float(np.abs(d - twin).max())})
        good += n_ok
    worst = min(tensors, key=lambda t: t["agree"])
    return {"weights_exact": good / total, "tensors": tensors, "worst": worst}
