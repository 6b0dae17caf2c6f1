"""The parts a LUT times: one per key (a block, the stem, the tail, a neck or a head), each buildable as a PyTorch
module. A neck takes its levels packed into one input (model.bifpn.PackedNeck).

Keys follow `model.latency`. A block is built alone with `model.blocks.make_block`; the stem, tail and head are
the matching slices of `model.build(arch)`, so a LUT entry times exactly what the whole network runs.
`primitives()` lists a part's convolutions (kind, MACs, tensor sizes) for the phone-profile predictor.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from model import arch as archlib
from model.arch import Arch, parse_block_op
from model.bifpn import PackedNeck
from model.blocks import make_block
from model.hooks import forward_with_hooks
from model.latency import block_key, fixed_keys, head_key, neck_key, network_keys, stem_key, tail_key
from model.net import build, init_weights
from model.space import SearchSpace


@dataclass(frozen=True)
class Part:
    key: str
    kind: str  # block | stem | tail | neck | head
    in_hwc: tuple[int, int, int]
    arch: Arch | None = None  # the network a stem/tail/head slice comes from
    op: str = ""  # block op
    out: int = 0
    stride: int = 1
    act: str = "relu"

    @property
    def is_identity(self) -> bool:
        return self.kind == "block" and parse_block_op(self.op).kind == "skip"

    def module(self) -> nn.Module:
        """The part in eval mode (BN running stats as initialised: shapes, not weights, set the latency)."""
        if self.kind == "block":
            m = make_block(self.op, self.in_hwc[2], self.out, self.stride, self.act)
            init_weights(m)
        else:
            net = build(self.arch)
            if self.kind == "neck":  # in_hwc is (1, 1, packed length)
                return PackedNeck(net.neck, self.arch.level_shapes().values()).eval()
            m = {"stem": net.backbone.stem, "tail": net.backbone.tail, "head": net.head}[self.kind]
        return m.eval()

    def sample(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        h, w, c = self.in_hwc
        return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))


def space_parts(space: SearchSpace) -> dict[str, Part]:
    parts = {}
    for layer in space.layers():
        for op in layer.candidates:
            hwc = (*layer.in_hw, layer.cin)
            parts[block_key(op, hwc, layer.cout, layer.stride)] = Part(
                block_key(op, hwc, layer.cout, layer.stride), "block", hwc, op=op, out=layer.cout,
                stride=layer.stride, act=space.act)
    for neck in space.neck.candidates if space.neck else [None]:  # a neck choice: each neck and the head it needs
        for k, p in arch_parts(space.arch_for(space.first_choices(neck)), fixed_only=True).items():
            parts.setdefault(k, p)
    return parts


def arch_parts(arch: Arch, fixed_only: bool = False) -> dict[str, Part]:
    """The parts of one network, in network order (every key of `network_keys(arch)`)."""
    parts = {}
    if not fixed_only:
        for _, layer, hwc in arch.block_shapes():
            k = block_key(layer.op, hwc, layer.out, layer.stride)
            parts[k] = Part(k, "block", tuple(hwc), op=layer.op, out=layer.out, stride=layer.stride,
                            act=arch.block_act(layer))
    h, w = arch.input_size
    parts[stem_key(arch)] = Part(stem_key(arch), "stem", (h, w, 3), arch)
    if tail_key(arch):
        parts[tail_key(arch)] = Part(tail_key(arch), "tail", arch.feature_shape("blocks"), arch)
    if neck_key(arch):
        packed = PackedNeck.packed_len(arch.level_shapes().values())
        parts[neck_key(arch)] = Part(neck_key(arch), "neck", (1, 1, packed), arch)
    parts[head_key(arch)] = Part(head_key(arch), "head", arch.head_in_shape, arch)
    order = network_keys(arch) if not fixed_only else fixed_keys(arch)
    return {k: parts[k] for k in order}


def shipped_archs(mbv1_too: bool = True) -> list[Arch]:
    """The shipped archs (model/archs/*.yaml), each with its own head and, when asked, with head.type mbv1."""
    out = []
    for path in archlib.shipped().values():
        a = archlib.load(path)
        out.append(a)
        if mbv1_too and a.head.type != "mbv1":
            out.append(replace(a, head=replace(a.head, type="mbv1"), name=f"{a.name}-mbv1"))
    return out


def lut_parts(space: SearchSpace, archs: list[Arch] = ()) -> dict[str, Part]:
    """The space's keys first, then those the given archs add (demo placing shipped archs on the same LUT)."""
    parts = space_parts(space)
    for a in archs:
        for k, p in arch_parts(a).items():
            parts.setdefault(k, p)
    return parts


# ---- primitives: what a latency model over MACs and bytes sees ---------------------------------------------
@dataclass(frozen=True)
class Prim:
    kind: str  # conv (full KxK), pw (1x1), dw (depthwise), tconv / tconv_dw (transposed), add
    macs: int
    in_elems: int
    out_elems: int
    kernel: int = 1
    stride: int = 1


def conv_prim(cin, cout, k, stride, hin, win, groups=1, transposed=False) -> Prim:
    if transposed:  # every input pixel scatters a KxK patch: MACs on the input grid
        hout, wout = hin * stride, win * stride
        macs = hin * win * cin * (cout // groups) * k * k
    else:
        hout, wout = -(-hin // stride), -(-win // stride)
        macs = hout * wout * cout * (cin // groups) * k * k
    dw = groups > 1 and groups == cin
    kind = ("tconv_dw" if dw else "tconv") if transposed else ("dw" if dw else ("pw" if k == 1 else "conv"))
    return Prim(kind, macs, hin * win * cin, hout * wout * cout, k, stride)


def ir_prims(h, w, cin, cout, mid, k, stride, residual, expand_conv=True) -> list[Prim]:
    """An inverted residual as primitives (the published phone tables' `expanded_conv`)."""
    prims = [conv_prim(cin, mid, 1, 1, h, w)] if expand_conv else []
    prims.append(conv_prim(mid, mid, k, stride, h, w, groups=mid))
    ho, wo = -(-h // stride), -(-w // stride)
    prims.append(conv_prim(mid, cout, 1, 1, ho, wo))
    if residual:
        prims.append(Prim("add", 0, 2 * ho * wo * cout, ho * wo * cout))
    return prims


def module_prims(module: nn.Module, sample: torch.Tensor) -> list[Prim]:
    """Primitives of any module, read off a forward pass with hooks (convs, transposed convs, residual adds)."""
    prims: list[Prim] = []

    def conv_hook(m, inp, out):
        _, cin, hin, win = inp[0].shape
        t = isinstance(m, nn.ConvTranspose2d)
        prims.append(conv_prim(cin, m.out_channels, m.kernel_size[0], m.stride[0], hin, win, m.groups, t))

    def res_hook(m, inp, out):
        if getattr(m, "use_res", False):
            n = out[0].numel()
            prims.append(Prim("add", 0, 2 * n, n))

    hooks = [(m, conv_hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    hooks += [(m, res_hook) for m in module.modules() if hasattr(m, "use_res")]
    forward_with_hooks(module, sample, hooks)
    return prims
