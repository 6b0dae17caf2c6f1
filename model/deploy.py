"""The deploy graph: what convert ships and what device_bench times. `deploy_model(net, deconv)` returns an eval-mode
copy with every BatchNorm folded into the conv before it and every depthwise ConvTranspose2d rewritten (`deconv`, one
of REWRITES) into a form the target runs well (litert-torch lowers a C-channel depthwise ConvTranspose2d into C SLICE
+ C TRANSPOSE_CONV + CONCATENATION, and int8 recipes keep TRANSPOSE_CONV slow or float). Which rewrite each artifact
format ships, and why, is model/rewrites.py FORMAT_REWRITE (convert/targets.py gives it to each target); the default
is what every .tflite ships (TFLITE_REWRITE, "interleave"), so LUTs and twins see the shipped graph.

Rewrites of a depthwise ConvTranspose2d (stride s, kernel k, padding p), all exact:
- "subpixel": output pixel o = s*m + r (phase r) only sees kernel taps kk = r + p - s*d at input m + d, so ONE
  stride-1 depthwise Conv2d with channel multiplier s*s (each phase's taps in its own output channel) followed by a
  pixel shuffle computes it. TFLite: DEPTHWISE_CONV_2D (+ PAD when the taps are asymmetric) + RESHAPE, TRANSPOSE,
  RESHAPE. What shipped before "interleave"; the twins still read such files.
- "phases": the same taps as s*s separate depthwise convs, concatenated, then a pixel shuffle.
- "interleave" (.tflite and ONNX): the phases' convs, interleaved by stacks on the channels-last view (no TRANSPOSE),
  the ReLU after the deconv fused into each phase's conv. In static int8, ai-edge-quantizer gives a row phase's convs
  their CONCATENATION's scale and requantizes a row whose scale differs from the output's (one int8 -> int8
  QUANTIZE per deconv, still fully integer); quantize/qat.py QInterleave and requantize model that bit-exactly.
- "zeros": zero insertion (stride-s upsampling with zeros) then a stride-1 depthwise conv with the flipped kernel.
- "dense": one dense ConvTranspose2d with a block-diagonal weight (C times the MACs, one TRANSPOSE_CONV).
- "none": leave the ConvTranspose2d (litert-torch's direct lowering, the bench's baseline; Core ML ships it: its own
  grouped conv_transpose is one op).

Measured in one run (`python -m convert head-bench --rewrites subpixel phases interleave --precision all --onnx`,
2026-12-03: EfficientPose-A's MBV1 head vs the plain head, in 16x12x96, 1 thread, thread CPU time, the fastest of 7
interleaved rounds' median of 30 invokes, XNNPACK, shared 2-core x86 host; FLOP ratio mbv1/plain 0.31):
  .tflite        plain     subpixel        phases          interleave
  fp32           2.87 ms   1.61 (0.56x)    1.17 (0.41x)    0.82 ms (0.28x)
  fp16           2.88 ms   1.62 (0.56x)    1.15 (0.40x)    0.81 ms (0.28x)
  int8 static    2.64 ms   6.38 (2.42x)    5.74 (2.17x)    0.76 ms (0.29x)
  int8-dynamic   3.46 ms   5.83 (1.68x)    3.77 (1.09x)    3.52 ms (1.02x)
  ONNX (onnxruntime 1.31.1, 1 thread): plain 2.12 ms, subpixel 3.29 (1.55x), phases 2.95 (1.39x), interleave 1.24 ms
  (0.59x).
Why (per-op profiles, runtime/tflite_profile.py; the sub-pixel and phases ones from head-bench runs before this
change): XNNPACK runs the sub-pixel form's multiplier-4 int8 depthwise conv far slower than four multiplier-1 ones,
and the pixel shuffle's rank-5 TRANSPOSE is the largest single op of the phases form; in this run interleave's data
movement (CONCATENATION + RESHAPE) is 0.20 ms of its 0.81 ms op sum in fp32, 0.06 of 0.90 ms in int8. int8-dynamic
stays at ~1x plain under every rewrite: there the depthwise convs run as hybrid (int8 weights, float activations)
kernels, 2.04 ms for interleave's vs 0.23 ms for the same convs in fp32, so they, not the rewrite, keep it above.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .bifpn import freeze_fusions
from .rewrites import FORMAT_REWRITE, REWRITES, TFLITE_REWRITE  # noqa: F401  (the table; torch-free)


# ---------------------------------------------------------------- BatchNorm folding
def _bn_scale_shift(bn: nn.BatchNorm2d):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    return scale, shift


@torch.no_grad()
def fold_bn(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Module:
    """A copy of `conv` with `bn` folded in (conv bias added). For ConvTranspose2d the weight is
    (in, out/groups, kH, kW): output channel g*out/groups + j lives at [group g's inputs, j], so the per-output
    scale is applied per group; torch's fuse_conv_bn_eval(transpose=True) scales dim 1 as if groups == 1."""
    conv = copy.deepcopy(conv)
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):
        g = conv.groups
        w.copy_((w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:]) *
                 scale.view(g, 1, -1, 1, 1)).view_as(w))
    else:
        w.mul_(scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    conv.bias = nn.Parameter(bias * scale + shift)
    return conv


def fold_all_bn(module: nn.Module) -> nn.Module:
    """In place: every BatchNorm2d that directly follows a conv in an nn.Sequential is folded into it."""
    for child in module.children():
        fold_all_bn(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a], module._modules[b] = fold_bn(conv, bn), nn.Identity()
    return module


# ---------------------------------------------------------------- depthwise ConvTranspose2d rewrites
def is_depthwise_deconv(m: nn.Module) -> bool:
    return (isinstance(m, nn.ConvTranspose2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            and m.dilation == (1, 1))


def _phase_taps(k: int, s: int, p: int):
    """Per phase r: {input offset d: kernel tap kk} with kk = r + p - s*d in [0, k); and the overall d range."""
    taps = [{(r + p - kk) // s: kk for kk in range(k) if (r + p - kk) % s == 0} for r in range(s)]
    ds = [d for t in taps for d in t]
    return taps, min(ds), max(ds)


def _check_exact(m: nn.ConvTranspose2d):
    for k, s, p, op in zip(m.kernel_size, m.stride, m.padding, m.output_padding):
        # The sub-pixel form yields exactly s*H outputs; that is the case when k - 2p - s + op == 0.
        if k - 2 * p - s + op != 0:
            raise ValueError(f"depthwise ConvTranspose2d k={k} s={s} p={p} output_padding={op}: output is not "
                             f"exactly {s}x the input, no sub-pixel rewrite")


def pixel_shuffle_nhwc(y: torch.Tensor, s: int, c: int) -> torch.Tensor:
    """nn.PixelShuffle(s) for c output channels, written on the channels-last view TFLite runs in: the outer
    permutes cancel against the layout transposes litert-torch inserts, leaving RESHAPE + one rank-5 TRANSPOSE +
    RESHAPE (torch's pixel_shuffle lowers to rank-4 RESHAPE/TRANSPOSE chains in NCHW with layout transposes
    around them). Only flatten/unflatten, no shape arithmetic, so TorchScript tracing (Core ML) keeps it static."""
    z = y.permute(0, 2, 3, 1).flatten(0, 1).unflatten(2, (c, s, s))  # (n*h, w, c, rh, rw)
    z = z.permute(0, 3, 1, 4, 2).flatten(2, 3).flatten(0, 1)  # (n*h*rh, w*rw, c)
    return z.unflatten(0, (y.shape[0], -1)).permute(0, 3, 1, 2)


class SubPixelDeconv(nn.Module):
    """Depthwise ConvTranspose2d as one depthwise Conv2d (multiplier sh*sw, one output channel per phase) +
    PixelShuffle. Asymmetric tap ranges get an explicit zero pad."""

    def __init__(self, m: nn.ConvTranspose2d):
        super().__init__()
        _check_exact(m)
        (sh, sw), c = m.stride, m.in_channels
        if sh != sw:
            raise ValueError("sub-pixel rewrite needs equal strides")
        (th, h0, h1), (tw, w0, w1) = (_phase_taps(k, s, p) for k, s, p in zip(m.kernel_size, m.stride, m.padding))
        kh, kw = h1 - h0 + 1, w1 - w0 + 1
        weight = torch.zeros(c, sh * sw, kh, kw)
        w = m.weight.detach()[:, 0]  # (C, k, k): depthwise, one output per group
        for rh in range(sh):
            for rw in range(sw):
                for dh, kkh in th[rh].items():
                    for dw, kkw in tw[rw].items():
                        weight[:, rh * sw + rw, dh - h0, dw - w0] = w[:, kkh, kkw]
        self.pad = (-w0, w1, -h0, h1)  # F.pad order: left, right, top, bottom
        sym = self.pad[0] == self.pad[1] and self.pad[2] == self.pad[3]
        self.conv = nn.Conv2d(c, c * sh * sw, (kh, kw), 1, (self.pad[2], self.pad[0]) if sym else 0, groups=c,
                              bias=m.bias is not None)
        self.explicit_pad = not sym
        self.conv.weight.data.copy_(weight.view(c * sh * sw, 1, kh, kw))
        if m.bias is not None:
            self.conv.bias.data.copy_(m.bias.detach().repeat_interleave(sh * sw))
        self.s, self.c = sh, c

    def forward(self, x):
        if self.explicit_pad:
            x = F.pad(x, self.pad)
        return pixel_shuffle_nhwc(self.conv(x), self.s, self.c)


class PhaseDeconv(SubPixelDeconv):
    """The same taps as s*s separate depthwise convs (multiplier 1), concatenated phase-major, then shuffled."""

    def __init__(self, m: nn.ConvTranspose2d):
        super().__init__(m)
        c, s = m.in_channels, m.stride[0]
        w = self.conv.weight.data.view(c, s * s, *self.conv.kernel_size)
        b = self.conv.bias.data.view(c, s * s) if self.conv.bias is not None else None
        self.phases = nn.ModuleList()
        for r in range(s * s):
            conv = nn.Conv2d(c, c, self.conv.kernel_size, 1, self.conv.padding, groups=c, bias=b is not None)
            conv.weight.data.copy_(w[:, r : r + 1])
            if b is not None:
                conv.bias.data.copy_(b[:, r])
            self.phases.append(conv)
        del self.conv

    def forward(self, x):
        if self.explicit_pad:
            x = F.pad(x, self.pad)
        y = torch.stack([conv(x) for conv in self.phases], 2)  # (N, C, s*s, H, W): pixel-shuffle channel order
        return pixel_shuffle_nhwc(y.flatten(1, 2), self.s, self.c)


class InterleaveDeconv(PhaseDeconv):
    """The phases form's s*s depthwise convs (multiplier 1), interleaved on the channels-last view instead of
    pixel-shuffled: a stack on W, then one on H (CONCATENATION + RESHAPE; the permutes cancel against litert-torch's
    layout transposes). The per-op profile (runtime/tflite_profile.py, `head-bench`) shows why: XNNPACK runs the
    sub-pixel form's multiplier-4 depthwise conv 3x slower than four multiplier-1 ones, and the pixel shuffle's
    rank-5 TRANSPOSE is the largest single op of the phases form. A ReLU / ReLU6 right after the deconv is taken
    in (`act`, applied to each phase: it commutes with the interleave) so the converter fuses it into each conv: a
    standalone int8 RELU on the interleaved tensor costs more than the convs under XNNPACK (3 ms of 4 in the int8
    head)."""

    def __init__(self, m: nn.ConvTranspose2d, act: nn.Module | None = None):
        super().__init__(m)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x):
        if self.explicit_pad:
            x = F.pad(x, self.pad)
        z = [self.act(conv(x)).permute(0, 2, 3, 1) for conv in self.phases]  # (N, H, W, C), phase-major (rh, rw)
        rows = [torch.stack(z[rh * self.s:(rh + 1) * self.s], 3).flatten(2, 3) for rh in range(self.s)]
        return torch.stack(rows, 2).flatten(1, 2).permute(0, 3, 1, 2)  # (N, H*s, W*s, C) -> NCHW


class ZeroInsertDeconv(nn.Module):
    """Zero insertion (x at every s-th pixel) then a stride-1 depthwise conv with the spatially flipped kernel."""

    def __init__(self, m: nn.ConvTranspose2d):
        super().__init__()
        _check_exact(m)
        c, (kh, kw), (s, _) = m.in_channels, m.kernel_size, m.stride
        (ph, pw), (oh, ow) = m.padding, m.output_padding
        self.s = s
        self.pad = (kw - 1 - pw, kw - 1 - pw + ow - (s - 1), kh - 1 - ph, kh - 1 - ph + oh - (s - 1))
        self.conv = nn.Conv2d(c, c, (kh, kw), 1, 0, groups=c, bias=m.bias is not None)
        self.conv.weight.data.copy_(m.weight.detach().flip(2, 3))
        if m.bias is not None:
            self.conv.bias.data.copy_(m.bias.detach())

    def forward(self, x):
        n, c, h, w = x.shape
        s = self.s
        z = F.pad(x.view(n * c, h, 1, w, 1), (0, s - 1, 0, 0, 0, s - 1)).view(n, c, h * s, w * s)  # rank <= 5
        return self.conv(F.pad(z, self.pad))


def dense_deconv(m: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """The depthwise ConvTranspose2d as a dense one with a block-diagonal weight (groups=1)."""
    c = m.in_channels
    d = nn.ConvTranspose2d(c, c, m.kernel_size, m.stride, m.padding, m.output_padding, bias=m.bias is not None)
    w = torch.zeros_like(d.weight)
    idx = torch.arange(c)
    w[idx, idx] = m.weight.detach()[:, 0]
    d.weight.data.copy_(w)
    if m.bias is not None:
        d.bias.data.copy_(m.bias.detach())
    return d


def rewrite_deconv(m: nn.ConvTranspose2d, how: str = "subpixel") -> nn.Module:
    """The chosen equivalent of one depthwise ConvTranspose2d."""
    if how not in REWRITES:
        raise ValueError(f"unknown deconv rewrite {how!r} (expected one of {', '.join(REWRITES)})")
    return {"subpixel": SubPixelDeconv, "phases": PhaseDeconv, "interleave": InterleaveDeconv,
            "zeros": ZeroInsertDeconv, "dense": dense_deconv,
            "none": copy.deepcopy}[how](m)


def _act_after(module: nn.Module, name: str) -> str | None:
    """In an nn.Sequential, the name of the ReLU / ReLU6 that follows child `name` (Identity, e.g. a folded BN,
    between them), else None."""
    if not isinstance(module, nn.Sequential):
        return None
    names = list(module._modules)
    for nxt in names[names.index(name) + 1:]:
        m = module._modules[nxt]
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            return nxt
        if not isinstance(m, nn.Identity):
            return None
    return None


def rewrite_all_deconv(module: nn.Module, how: str = "subpixel") -> nn.Module:
    """In place: replace every depthwise ConvTranspose2d below `module` (with "interleave", the ReLU right after
    it moves into the rewrite, see InterleaveDeconv)."""
    for name, child in module.named_children():
        if is_depthwise_deconv(child):
            act = _act_after(module, name) if how == "interleave" else None
            if act is not None:
                setattr(module, name, InterleaveDeconv(child, copy.deepcopy(module._modules[act])))
                module._modules[act] = nn.Identity()
            else:
                setattr(module, name, rewrite_deconv(child, how))
        else:
            rewrite_all_deconv(child, how)
    return module


@torch.no_grad()
def deploy_model(net: nn.Module, deconv: str = TFLITE_REWRITE, fold: bool = True) -> nn.Module:
    """An eval-mode copy of `net` ready to convert: BatchNorm folded, depthwise ConvTranspose2d rewritten
    (`deconv`, see REWRITES), in-place activations made out-of-place (export-friendly), a BiFPN neck's fusion
    weights made constants (model.bifpn.freeze_fusions). `net` is untouched."""
    net = copy.deepcopy(net).eval()
    freeze_fusions(net)
    if fold:
        fold_all_bn(net)
    rewrite_all_deconv(net, deconv)
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return net.eval()
