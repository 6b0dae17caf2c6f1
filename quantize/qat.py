"""Quantization-aware training (QAT) that ships a fully-integer .tflite computing what its PyTorch twin computes.

The QAT model (`QATNet`) is the deploy graph (model/deploy.py: BatchNorm folded into the conv before it, as the
export folds it; depthwise ConvTranspose2d rewritten as the .tflite ships it, model.deploy.TFLITE_REWRITE: the
"interleave" form, QInterleave; states saved with the sub-pixel form, QSubPixel, still load) with fake quantization
at exactly the tensors the int8 TFLite graph quantizes:
- the input (the QUANTIZE op);
- the output of every conv (CONV_2D / DEPTHWISE_CONV_2D with its ReLU / ReLU6 fused, as litert-torch fuses it),
  the head's sub-pixel or interleave phase convs included (the pixel shuffle's RESHAPE / TRANSPOSE and the stride-2
  PADs share their input's scale, so they need no quantizer of their own; an interleave's row CONCATENATIONs take
  their convs' shared scale, its last one has its own, onto which a differing row is requantized);
- the output of every residual ADD (its two inputs are already quantized: the block input and the project conv).
Weights: per-output-channel symmetric int8, narrow range [-127, 127], scale = max|w| / 127; biases int32 with scale
input scale x weight scale (ai-edge-quantizer's static_wi8_ai8 recipe, uniform_quantize_tensor.py). Activations:
per-tensor asymmetric int8 from a learned range [lo, hi] with ai-edge-quantizer's formula
(scale = (max(hi, 0) - min(lo, 0)) / 255, zero point = rint(-128 - min(lo, 0) / scale)), round half to even.
Ranges start from the min/max over calibration crops (what the PTQ export uses) and are learned with straight-
through rounding (LSQ+ style gradients for the scale; the zero point follows lo).

Export (`export_tflite`) converts the same graph in float and gives ai-edge-quantizer the learned ranges as its
calibration results (QSVs: min/max per tensor) instead of data statistics, so the file's scales and zero points are
the QAT model's; they are read back from the file and checked equal.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import InvertedResidual
from model.deploy import TFLITE_REWRITE, InterleaveDeconv, SubPixelDeconv, deploy_model, pixel_shuffle_nhwc
from model.heads import PoseHead
from model.net import Backbone, PoseNet
from posekit.errors import UserError

QMIN, QMAX = -128, 127
WMAX = 127  # symmetric narrow range for weights
QAT_FORMAT = "posenas-qat/1"
QAT_REWRITES = ("interleave", "subpixel")  # the head forms QATNet quantizes: what ships (TFLITE_REWRITE), and before


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """torch.round (half to even, as numpy's rint in ai-edge-quantizer) with a straight-through gradient."""
    return x + (torch.round(x) - x).detach()


class ActQuant(nn.Module):
    """Per-tensor asymmetric int8 fake quantization with a learned range. `relu`: the tensor is a ReLU output, its
    range starts at 0 (zero point -128, as the PTQ graph has it) and only the top is learned."""

    def __init__(self, relu: bool = False):
        super().__init__()
        self.relu = relu
        self.lo = nn.Parameter(torch.zeros(()), requires_grad=not relu)
        self.hi = nn.Parameter(torch.ones(()))
        self.enabled = True  # False: identity (the float graph, for calibration and export)
        self.observing = False  # True: widen [lo, hi] to the min/max of what passes (calibration)
        self.held = None  # a file's own (scale, zero point): see hold()
        self._seen = False

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) exactly as ai-edge-quantizer derives them from (min, max), in float32; a file's own
        pair when held (hold: the twin of a post-training int8 file)."""
        if self.held is not None:
            return self.held
        lo = torch.zeros_like(self.lo) if self.relu else torch.clamp(self.lo, max=0)
        hi = torch.clamp(self.hi, min=0)
        scale = torch.clamp(hi - lo, min=1e-9) / (QMAX - QMIN)
        zp = torch.clamp(round_ste(QMIN - lo / scale), QMIN, QMAX)
        return scale, zp

    def hold(self, scale: float, zero_point: int):
        """Use a file's (scale, zero point) as they are (float32), instead of deriving them from [lo, hi]."""
        self.held = (torch.tensor(scale, dtype=torch.float32), torch.tensor(float(zero_point)))

    @torch.no_grad()
    def observe(self, x: torch.Tensor):
        lo, hi = float(x.min()), float(x.max())
        if self._seen:
            lo, hi = min(lo, float(self.lo)), max(hi, float(self.hi))
        self.lo.fill_(0.0 if self.relu else lo)
        self.hi.fill_(hi)
        self._seen = True

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The int8 values (as float) the runtime holds for float x (XNNPACK's QUANTIZE: x * (1 / scale) in
        float32, rounded half to even)."""
        scale, zp = self.qparams()
        return torch.clamp(torch.round(x * (1 / scale)) + zp, QMIN, QMAX)

    def forward(self, x):
        if self.observing:
            self.observe(x)
        if not self.enabled:
            return x
        scale, zp = self.qparams()
        if not self.training:
            with torch.no_grad():
                return (self.quantize(x) - zp) * scale
        q = torch.clamp(round_ste(x / scale) + zp, QMIN, QMAX)
        return (q - zp) * scale

    def extra_repr(self):
        return f"relu={self.relu}"


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scale max|w| / 127 (output channels are dim 0 in torch's Conv2d weight, and
    TFLite's quantized dimension for CONV_2D (dim 0) and DEPTHWISE_CONV_2D (dim 3) alike)."""
    bound = w.detach().abs().flatten(1).amax(1).clamp(min=1e-9)
    return (bound / WMAX).view(-1, *([1] * (w.ndim - 1)))


class QConv(nn.Module):
    """A (BatchNorm-folded) Conv2d + optional fused ReLU/ReLU6, int8 weights, int32 bias, quantized output.
    `inq` is the quantizer of the conv's input (its scale sets the bias scale); held outside the module tree."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None, inq: ActQuant, pad: tuple | None = None):
        super().__init__()
        self.conv, self.act, self.pad = conv, act, pad
        self.__dict__["inq"] = inq
        self.outq = ActQuant(relu=isinstance(act, (nn.ReLU, nn.ReLU6)))
        self.fake = True

    def qweights(self):
        w, b = self.conv.weight, self.conv.bias
        if not self.fake:
            return w, b
        s = weight_scale(w)
        wq = torch.clamp(round_ste(w / s), -WMAX, WMAX) * s
        if b is not None:
            bs = self.inq.qparams()[0].detach() * s.view(-1)
            b = round_ste(b / bs) * bs
        return wq, b

    def forward(self, x):
        if self.pad is not None:
            x = F.pad(x, self.pad)  # zero padding: the runtime pads with the zero point, i.e. exactly 0
        c = self.conv
        if self.fake and not self.training and self.outq.enabled:
            return self._integer(x)
        w, b = self.qweights()
        y = F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)
        if self.act is not None:
            y = self.act(y)
        return self.outq(y)

    @torch.no_grad()
    def _integer(self, x):
        """Eval: the runtime's integer arithmetic. The int32 accumulator exactly (float64 holds it), then XNNPACK's
        fp32 requantization: float32(acc) * float32(s_in * s_w / s_out), rounded half to even, + zero point,
        clamped (the fused ReLU/ReLU6 as the clamp of the output range)."""
        c, inq, outq = self.conv, self.inq, self.outq
        si, zi = inq.qparams()
        so, zo = outq.qparams()
        qx = torch.round(x.double() / si.double())  # q - zero point: x is on the input's grid
        s = weight_scale(c.weight)
        wq = torch.clamp(torch.round(c.weight.detach() / s), -WMAX, WMAX).double()
        b = None
        if c.bias is not None:
            b = torch.round(c.bias.detach() / (si.detach() * s.view(-1))).double()
        acc = F.conv2d(qx, wq, b, c.stride, c.padding, c.dilation, c.groups)
        scale = (si * s.view(-1)) / so  # float32, as XNNPACK computes it
        y = torch.round(acc.float() * scale.view(1, -1, 1, 1)) + zo
        lo, hi = QMIN, QMAX
        if isinstance(self.act, (nn.ReLU, nn.ReLU6)):
            lo = max(lo, float(zo))
        if isinstance(self.act, nn.ReLU6):
            hi = min(hi, float(zo + torch.round(6 / so)))
        return ((torch.clamp(y, lo, hi) - zo) * so).float()


class QSubPixel(nn.Module):
    """The head's rewritten depthwise ConvTranspose2d: one depthwise conv (ReLU fused: it commutes with the pixel
    shuffle, and the converter fuses it into the conv) then the pixel shuffle, which keeps the conv's scale."""

    def __init__(self, m: SubPixelDeconv, act: nn.Module | None, inq: ActQuant):
        super().__init__()
        self.q = QConv(m.conv, act, inq, m.pad if m.explicit_pad else None)
        self.s, self.c = m.s, m.c

    def forward(self, x):
        return pixel_shuffle_nhwc(self.q(x), self.s, self.c)


class QInterleave(nn.Module):
    """The head's depthwise ConvTranspose2d as "interleave" (model.deploy.InterleaveDeconv: s*s depthwise convs, the
    ReLU fused into each, interleaved by a CONCATENATION per output row phase and one across them). Quantized as
    ai-edge-quantizer's static int8 quantizes that graph (a CONCATENATION's inputs take its output's scale): the
    convs of row phase rh share one output quantizer (`rows[rh]`, also their CONCATENATION's and RESHAPE's), the
    final CONCATENATION has its own (`outq`), and a row whose scale or zero point differs from it is requantized
    (int8 -> int8 QUANTIZE)."""

    def __init__(self, m: InterleaveDeconv, inq: ActQuant):
        super().__init__()
        act = None if isinstance(m.act, nn.Identity) else m.act
        self.s = m.s
        self.phases = nn.ModuleList(QConv(conv, act, inq, m.pad if m.explicit_pad else None) for conv in m.phases)
        self.rows = nn.ModuleList(self.phases[rh * self.s].outq for rh in range(self.s))
        for i, q in enumerate(self.phases):
            q.outq = self.rows[i // self.s]  # shared: one row phase, one scale
        self.outq = ActQuant(relu=act is not None)

    def forward(self, x):
        s = self.s
        z = [q(x) for q in self.phases]  # each on its row's grid
        exact = not self.training and self.outq.enabled and self.phases[0].fake
        if exact:  # eval: the runtime's requantization of a row onto the output's grid
            z = [requantize(v, self.rows[i // s], self.outq) for i, v in enumerate(z)]
        z = [v.permute(0, 2, 3, 1) for v in z]
        rows = [torch.stack(z[rh * s:(rh + 1) * s], 3).flatten(2, 3) for rh in range(s)]
        y = torch.stack(rows, 2).flatten(1, 2).permute(0, 3, 1, 2)
        return y if exact else self.outq(y)


@torch.no_grad()
def requantize(x: torch.Tensor, src: ActQuant, dst: ActQuant) -> torch.Tensor:
    """XNNPACK's int8 -> int8 QUANTIZE (qs8 convert) of `x` (on src's grid) onto dst's grid: the scale ratio as a
    Q8 multiplier m = lrintf(256 * float32(s_src / s_dst)), q_dst = (((q_src - z_src) * m + 128) >> 8) + z_dst,
    clamped (xnn_init_qs8_cvt_scalar_params and the qs8-vcvt kernels). Same scale and zero point: no op in the file."""
    (si, zi), (so, zo) = src.qparams(), dst.qparams()
    if float(si) == float(so) and float(zi) == float(zo):
        return x
    m = float(np.rint(np.float32(256.0) * (np.float32(si.item()) / np.float32(so.item()))))
    q = torch.round(x.double() / si.double())  # q - zero point: x is on src's grid
    out = torch.clamp(torch.floor((q * m + 128) / 256) + zo.double(), QMIN, QMAX)
    return ((out - zo.double()) * so.double()).float()


class QResidual(nn.Module):
    """MBConv with quantized ADD output (both ADD inputs are quantized by the ops that produce them: `aq` the
    block input's quantizer, `bq` the project conv's; held outside the module tree)."""

    def __init__(self, conv: nn.Sequential, use_res: bool, addq: ActQuant | None, aq=None, bq=None):
        super().__init__()
        self.conv, self.use_res, self.addq = conv, use_res, addq
        self.__dict__["aq"], self.__dict__["bq"] = aq, bq

    def forward(self, x):
        y = self.conv(x)
        if not self.use_res:
            return y
        if not self.training and self.addq.enabled and self.aq.enabled:
            return self._integer(x, y)
        return self.addq(x + y)

    @torch.no_grad()
    def _integer(self, x, y):
        """Eval: XNNPACK's int8 ADD (qs8 vadd): each input's scale ratio to the output's as a 20-bit fixed-point
        multiplier, a rounding bias and one arithmetic shift."""
        import math

        (sa, _), (sb, _), (so, zo) = self.aq.qparams(), self.bq.qparams(), self.addq.qparams()
        ra, rb = (sa / so).item(), (sb / so).item()  # float32 ratios, as XNNPACK computes them
        shift = 20 - (math.frexp(max(ra, rb))[1] - 1)
        ma, mb = (float(np.rint(np.float32(r) * np.float32(2.0**shift))) for r in (ra, rb))
        qa, qb = torch.round(x.double() / sa.double()), torch.round(y.double() / sb.double())  # q - zero point
        acc = qa * ma + qb * mb + 2.0 ** (shift - 1)
        q = torch.clamp(torch.floor(acc / 2.0**shift) + zo.double(), QMIN, QMAX)
        return ((q - zo.double()) * so.double()).float()


class QHead(nn.Module):
    def __init__(self, head: PoseHead, final: QConv):
        super().__init__()
        self.up, self.sic, self.final = head.up, head.sic, final

    def forward(self, x):
        return self.final(self.sic(self.up(x)))


_ACTS = (nn.ReLU, nn.ReLU6)


class _Builder:
    """Walks the deploy graph in forward order, replacing each unit by its fake-quant form; `cur` is the quantizer
    of the tensor flowing at that point (the input of the next conv: its bias scale)."""

    def __init__(self, inq: ActQuant):
        self.cur = inq

    def module(self, m: nn.Module, where: str) -> nn.Module:
        if isinstance(m, nn.Identity):
            return m
        if isinstance(m, nn.Sequential):
            return self.sequential(m, where)
        if isinstance(m, InvertedResidual):
            aq = self.cur
            conv = self.sequential(m.conv, f"{where}.conv")
            bq, addq = self.cur, ActQuant() if m.use_res else None
            if addq is not None:
                self.cur = addq
            return QResidual(conv, m.use_res, addq, aq, bq)
        if isinstance(m, Backbone):
            for name in ("stem", "blocks", "tail"):
                setattr(m, name, self.module(getattr(m, name), f"{where}.{name}"))
            return m
        if isinstance(m, PoseHead):
            m.up = self.module(m.up, f"{where}.up")
            m.sic = self.module(m.sic, f"{where}.sic")
            return QHead(m, self.conv(m.final, None))
        if isinstance(m, (nn.Conv2d, SubPixelDeconv)):  # InterleaveDeconv is a SubPixelDeconv too
            return self.conv(m, None)
        raise UserError(f"qat: no fake-quant rule for {where} ({type(m).__name__}); supported: the deploy graph of "
                        "model/ (conv + BN + ReLU/ReLU6, inverted residuals, sub-pixel deconv heads)")

    def conv(self, m, act):
        if isinstance(m, InterleaveDeconv):  # its ReLU is inside it (deploy_model moved it there)
            if act is not None:
                raise UserError("qat: an activation after an interleave deconv that already holds its own")
            q = QInterleave(m, self.cur)
        else:
            q = QSubPixel(m, act, self.cur) if isinstance(m, SubPixelDeconv) else QConv(m, act, self.cur)
        self.cur = q.q.outq if isinstance(q, QSubPixel) else q.outq
        return q

    def sequential(self, seq: nn.Sequential, where: str) -> nn.Sequential:
        kids = list(seq.named_children())
        out, i = [], 0
        while i < len(kids):
            name, m = kids[i]
            if isinstance(m, (nn.Conv2d, SubPixelDeconv)):
                j, act = i + 1, None
                while j < len(kids) and isinstance(kids[j][1], nn.Identity):  # folded BatchNorms
                    j += 1
                if j < len(kids) and isinstance(kids[j][1], _ACTS):
                    act, j = copy.deepcopy(kids[j][1]), j + 1
                else:
                    j = i + 1
                out.append(self.conv(m, act))
                i = j
                continue
            if isinstance(m, _ACTS):
                raise UserError(f"qat: {where}.{name}: an activation that does not follow a conv (not fusable)")
            out.append(self.module(m, f"{where}.{name}"))
            i += 1
        return nn.Sequential(*out)


class QATNet(nn.Module):
    """Input quantizer + the fake-quant deploy graph of a PoseNet. Image (N, 3, H, W) -> heatmaps (N, J, h, w)."""

    def __init__(self, net: PoseNet, deconv: str = TFLITE_REWRITE):
        super().__init__()
        if getattr(net, "neck", None) is not None:  # its fusion MUL/ADD chains, resizes and pools have no rule yet
            raise UserError("qat: no fake-quant rule for a BiFPN neck (model/bifpn.py: fusion multiply-adds, nearest "
                            "resize, max pooling); QAT and the exact int8 twin cover neckless nets only")
        if deconv not in QAT_REWRITES:
            raise UserError(f"qat: deconv rewrite {deconv!r} has no fake-quant rule (one of {', '.join(QAT_REWRITES)})")
        d = deploy_model(net, deconv)
        self.deconv = deconv
        self.inq = ActQuant()
        b = _Builder(self.inq)
        self.backbone = b.module(d.backbone, "backbone")
        self.head = b.module(d.head, "head")
        self.num_joints = net.arch.num_joints

    def forward(self, x):
        return self.head(self.backbone(self.inq(x)))

    def quantizers(self) -> list[ActQuant]:
        return [m for m in self.modules() if isinstance(m, ActQuant)]

    @property
    def outq(self) -> ActQuant:
        return self.head.final.outq

    def range_parameters(self):
        return [p for q in self.quantizers() for p in (q.lo, q.hi) if p.requires_grad]

    def weight_parameters(self):
        ids = {id(p) for p in self.range_parameters()} | {id(q.lo) for q in self.quantizers()}
        return [p for p in self.parameters() if id(p) not in ids]

    def set_quant(self, on: bool):
        for m in self.modules():
            if isinstance(m, ActQuant):
                m.enabled = on
            elif isinstance(m, QConv):
                m.fake = on

    @contextlib.contextmanager
    def float_mode(self):
        """The float deploy graph with the QAT model's weights (calibration, export)."""
        self.set_quant(False)
        try:
            yield self
        finally:
            self.set_quant(True)

    @torch.no_grad()
    def calibrate(self, batches) -> QATNet:
        """Every range := the min/max over `batches` in the float graph (what ai-edge-quantizer's PTQ uses)."""
        qs = self.quantizers()
        for q in qs:
            q._seen, q.observing = False, True
        try:
            with self.float_mode():
                for b in batches:
                    self(b)
        finally:
            for q in qs:
                q.observing = False
        return self

    @torch.no_grad()
    def int8_output(self, x: torch.Tensor) -> torch.Tensor:
        """The int8 heatmap values (N, J, h, w) the runtime's output tensor holds (before DEQUANTIZE)."""
        return self.outq.quantize(self.eval()(x))


def build_qat(net: PoseNet, calib=None) -> QATNet:
    q = QATNet(net).eval()
    if calib is not None:
        q.calibrate(calib)
    return q


# ---------------------------------------------------------------- the QAT model's file (weights_only loadable)
def qat_state(qat: QATNet, arch, **extra) -> dict:
    return {"format": QAT_FORMAT, "arch": arch.to_dict(), "deconv": qat.deconv,
            "model": {k: v.detach().clone().contiguous() for k, v in qat.state_dict().items()}, **extra}


def load_qat(path_or_state) -> tuple[QATNet, object, dict]:
    """(QATNet, Arch, the dict) from a file written with qat_state (torch.load weights_only=True)."""
    from model.arch import from_dict
    from model.checkpoint import load_state_file, load_weights

    if isinstance(path_or_state, dict):
        st, where = path_or_state, "QAT state"
    else:
        st, where = load_state_file(path_or_state, "QAT checkpoint"), str(path_or_state)
    if not isinstance(st, dict) or st.get("format") != QAT_FORMAT:
        raise UserError(f"{where}: not a QAT checkpoint (format {QAT_FORMAT})")
    arch = from_dict(st["arch"], src=f"{where}: arch")
    qat = load_weights(QATNet(PoseNet(arch), st.get("deconv", "subpixel")), st["model"], where)
    return qat.eval(), arch, st


# ---------------------------------------------------------------- the twin's outputs (for parity)
@torch.no_grad()
def twin_outputs(qat: QATNet | str | Path, x) -> np.ndarray:
    """The QAT twin's heatmaps (dequantized int8 values) for NCHW inputs `x` (array or tensor), as NCHW float32:
    what the QAT .tflite computes, up to one int8 step (rounding ties in the runtime's fixed-point requantization)."""
    if not isinstance(qat, QATNet):
        qat = load_qat(qat)[0]
    return qat.eval()(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy()


@torch.no_grad()
def twin_agreement(qat: QATNet, tflite_path: str | Path, batches) -> dict:
    """The .tflite's int8 output values against the twin's on NCHW `batches`: fractions identical / within one
    step, the largest step difference, and the SQNR of the dequantized outputs (twin as reference)."""
    from runtime import tflite

    it = tflite.interpreter(tflite_path, threads=1)
    scale, zp = (v.item() for v in qat.outq.qparams())
    same = near = total = 0
    worst, sig, noise = 0, 0.0, 0.0
    for b in batches:
        b = torch.as_tensor(b, dtype=torch.float32)
        tw = qat.int8_output(b).permute(0, 2, 3, 1).numpy()
        y = tflite.run(it, b.permute(0, 2, 3, 1).numpy())
        fq = np.round(y / scale + zp)  # float output = (q - zp) * scale: recover q
        d = np.abs(fq - tw)
        same, near, total = same + int((d == 0).sum()), near + int((d <= 1).sum()), total + d.size
        worst = max(worst, int(d.max()))
        ref = (tw - zp) * scale
        sig, noise = sig + float((ref**2).sum()), noise + float((((fq - tw) * scale) ** 2).sum())
    sqnr = float("inf") if noise == 0 else 10 * np.log10(sig / noise)
    return {"identical": same / total, "within_one_step": near / total, "max_step_diff": worst,
            "sqnr_db": round(sqnr, 2) if np.isfinite(sqnr) else None, "values": total}


def ptq_twin(net: PoseNet, int8_path: str | Path, fp32_path: str | Path, sample: torch.Tensor) -> QATNet:
    """The XNNPACK-exact twin of a static int8 .tflite that ai-edge-quantizer made from `fp32_path` (convert's
    post-training int8): the QAT graph of `net` in eval (XNNPACK's requantization and fixed-point ADD), every
    activation quantizer held at the file's own scale and zero point, weights rounded from `net` as the converter
    rounds them. Quantizers are matched to the file's tensors by value on `sample` (one NCHW crop), through the fp32
    file the int8 one was quantized from (same tensor names). UserError when a quantizer finds no tensor: the file
    does not quantize where the converter's graph does (another quantizer or graph)."""
    from runtime.tflite_twin import tflite_rewrite

    qat = QATNet(net, tflite_rewrite(net, int8_path)).eval()
    model = Path(int8_path).read_bytes()
    fq = {n: v for n, v in _tensor_quant(model).items() if len(v[0]) == 1}  # per-tensor: the activations
    for op, ins, outs in _tensor_ops(model):  # float I/O: the scale sits on the int8 side of (DE)QUANTIZE
        if op == "QUANTIZE" and ins and outs and outs[0] in fq:
            fq.setdefault(ins[0], fq[outs[0]])
        elif op == "DEQUANTIZE" and ins and outs and ins[0] in fq:
            fq.setdefault(outs[0], fq[ins[0]])
    match = _match_tensors(qat, fp32_path, sample[:1], set(fq))
    matched = {id(q) for q in match.values()}
    left = [q for q in qat.quantizers() if id(q) not in matched]
    if left:
        raise UserError(f"{int8_path}: {len(left)} of {len(qat.quantizers())} quantization points of the converter's "
                        "graph have no tensor in the file (not ai-edge-quantizer's static int8 of this graph)")
    held: dict = {}
    for name, aq in match.items():
        s, z = fq[name]
        pair = (float(np.float32(s[0])), int(z[0]))
        if held.setdefault(id(aq), pair) != pair:
            raise UserError(f"{int8_path}: tensor {name}: scale/zero point {pair} where the same quantization point "
                            f"has {held[id(aq)]} (not ai-edge-quantizer's static int8 of this graph)")
        aq.hold(*pair)
    return qat


def twin_check(entry: dict, model_dir: str | Path, inputs, min_within_one: float = 0.99,
               min_sqnr_db: float = 40.0) -> dict:
    """Parity's check of a QAT .tflite (a manifest entry with quantizer 'qat') against the PyTorch twin it was
    exported from, on NCHW `inputs`: the agreement of twin_agreement plus 'fails' (rules broken, [] if none)."""
    model_dir = Path(model_dir)
    twin = (entry.get("qat") or {}).get("twin")
    if not twin or not (model_dir / twin).is_file():
        return {"fails": [f"qat twin {twin!r}: missing (the .tflite cannot be checked against its QAT model)"]}
    a = twin_agreement(load_qat(model_dir / twin)[0], model_dir / entry["file"], [np.asarray(x)[None] for x in inputs])
    fails = [f"twin within_one_step {a['within_one_step']:.4f} < {min_within_one}"] * (
        a["within_one_step"] < min_within_one)
    if a["sqnr_db"] is not None and a["sqnr_db"] < min_sqnr_db:
        fails.append(f"twin sqnr_db {a['sqnr_db']} < {min_sqnr_db}")
    return {**a, "fails": fails}


# ---------------------------------------------------------------- export: learned ranges -> the .tflite's scales
class _Float(nn.Module):
    """The QAT model in float (for litert-torch), its weights the QAT model's."""

    def __init__(self, qat: QATNet):
        super().__init__()
        self.qat = copy.deepcopy(qat).eval()
        self.qat.set_quant(False)

    def forward(self, x):
        return self.qat(x)


def _tensor_ops(model: bytes):
    """[(op name, [input tensor names], [output tensor names])] of subgraph 0, in execution order."""
    from runtime.tflite_flatbuffer import operators, tensors

    tname = [t.name for t in tensors(model)]
    return [(op.name, [tname[t] for t in op.inputs if t >= 0], [tname[t] for t in op.outputs if t >= 0])
            for op in operators(model)]


def _tensor_quant(model: bytes) -> dict:
    """{tensor name: (scales, zero points)} of every quantized tensor of subgraph 0."""
    from runtime.tflite_flatbuffer import tensors

    return {t.name: (t.scale, t.zero_point) for t in tensors(model) if t.scale is not None}


# Ops whose output keeps the input's quantization (ai-edge-quantizer constrains them so; no requantization).
SAME_SCALE_OPS = ("PAD", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH")


@torch.no_grad()
def _match_tensors(qat: QATNet, fp32: Path, x: torch.Tensor, names) -> dict:
    """{tflite tensor name: ActQuant} by value: each quantizer's float tensor (hooked in the float graph) against
    the fp32 .tflite's intermediate tensors on the same input; tensors of SAME_SCALE_OPS inherit their input's."""
    from runtime.tflite import SIGNATURE, interpreter

    model = Path(fp32).read_bytes()
    it = interpreter(model, kernels="builtin", preserve_all_tensors=True)
    runner = it.get_signature_runner(SIGNATURE)
    runner(image=x.permute(0, 2, 3, 1).numpy())
    vals = {}
    for d in it.get_tensor_details():
        if d["name"] in names:
            try:
                vals[d["name"]] = it.get_tensor(d["index"])
            except ValueError:
                pass
    f = _Float(qat)
    seen: list[tuple[ActQuant, np.ndarray]] = []
    hooks = [q.register_forward_hook(lambda m, i, o, _q=q: seen.append((_q, o))) for q in f.qat.quantizers()]
    try:
        f(x)
    finally:
        for h in hooks:
            h.remove()
    by_orig = dict(zip(f.qat.quantizers(), qat.quantizers()))
    cands = [(by_orig[q], o.permute(0, 2, 3, 1).numpy() if o.ndim == 4 else o.numpy()) for q, o in seen]
    match = {}
    for name, v in vals.items():
        best, err = None, np.inf
        for q, o in cands:
            if o.shape == v.shape:
                e = float(np.abs(o - v).max()) / max(float(np.abs(o).max()), 1e-6)
                if e < err:
                    best, err = q, e
        if best is not None and err < 1e-3:
            match[name] = best
    ops = _tensor_ops(model)
    for op, ins, outs in ops:  # execution order: a same-scale chain resolves front to back
        if op in SAME_SCALE_OPS and ins and ins[0] in match:
            for o in outs:
                match.setdefault(o, match[ins[0]])
        elif op == "CONCATENATION" and ins and all(i in match for i in ins) and \
                len({id(match[i]) for i in ins}) == 1:  # an interleave row: its convs share the row's quantizer
            for o in outs:
                match.setdefault(o, match[ins[0]])
    for op, ins, outs in reversed(ops):  # an interleave's final CONCATENATION: named by the RESHAPE after it
        if op in SAME_SCALE_OPS and outs and outs[0] in match and ins and ins[0] in names:
            match.setdefault(ins[0], match[outs[0]])
    return match


def export_tflite(qat: QATNet, sample: torch.Tensor, path: str | Path, int8_io: bool = False,
                  work: Path | None = None) -> dict:
    """Write the fully-integer .tflite of `qat` to `path` (atomic): litert-torch converts the float graph,
    ai-edge-quantizer (static_wi8_ai8) quantizes it with the learned ranges as its calibration results. Returns
    {'tensors': quantized activations, 'scales_equal': every file scale/zero point == the QAT model's, ...}."""
    from ai_edge_quantizer import quantizer

    from posekit import export_tflite
    from quantize.tflite import _aeq_recipe
    from runtime import tflite

    path = Path(path)
    work = Path(work or path.parent)
    fp32 = work / f".{path.stem}.fp32.tflite"
    qat = qat.eval()
    try:
        export_tflite.litert_to_tflite(_Float(qat), sample[:1], fp32)
        model = fp32.read_bytes()
        q = quantizer.Quantizer(bytearray(model), _aeq_recipe("static_wi8_ai8", int8_io))
        with export_tflite.quiet():
            # One pass gives the QSV table's layout (every tensor the recipe quantizes); its values are replaced.
            qsvs = q.calibrate({tflite.SIGNATURE: [{"image": sample[:1].permute(0, 2, 3, 1).numpy()}]})
        match = _match_tensors(qat, fp32, sample[:1], set(qsvs))
        missing = sorted(set(qsvs) - set(match))
        if missing:
            raise UserError(f"qat export: no QAT quantizer for the .tflite tensor(s) {', '.join(missing[:5])}: the "
                            "QAT graph does not quantize where the converter does")
        for name, aq in match.items():
            lo = 0.0 if aq.relu else min(aq.lo.item(), 0.0)
            e = qsvs[name]
            e["min"] = np.full_like(np.asarray(e["min"]), lo)
            e["max"] = np.full_like(np.asarray(e["max"]), max(aq.hi.item(), 0.0))
        with export_tflite.quiet():
            out = bytes(q.quantize(qsvs, enable_progress_report=False).quantized_model)
    finally:
        fp32.unlink(missing_ok=True)
    fq = _tensor_quant(out)
    bad = []
    for name, aq in match.items():
        if name not in fq:
            continue  # a float I/O tensor
        s, z = (v.item() for v in aq.qparams())
        fs, fz = float(fq[name][0][0]), int(fq[name][1][0])
        if not (np.float32(s) == np.float32(fs) and int(z) == fz):
            bad.append(f"{name}: file {fs:.6g}/{fz}, QAT {s:.6g}/{int(z)}")
    if bad:
        raise UserError(f"qat export: {len(bad)} tensor scale(s) differ from the QAT model's: {'; '.join(bad[:3])}")
    from posekit.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(out)
    return {"tensors": len(match), "quantizers": len(qat.quantizers()), "scales_equal": True}
