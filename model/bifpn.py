"""BiFPN, EfficientDet's weighted bidirectional feature pyramid (Tan, Pang, Le 2020), as the optional neck of a PoseNet.

The neck takes the backbone's features at `levels` (strides, finest first, each twice the one before), brings each to
`width` channels with a 1x1 conv + BN where its channels differ, and applies `repeats` BiFPN layers. One layer over
levels P_0 (finest) .. P_n-1:

    top-down:   T_n-1 = P_n-1;  T_i = node(P_i, up(T_i+1))              for i = n-2 .. 1
    bottom-up:  O_0 = node(P_0, up(T_1));  O_i = node(P_i, T_i, down(O_i-1))  for i = 1 .. n-2
                O_n-1 = node(P_n-1, down(O_n-2))

EfficientDet's topology: the nodes with one input are removed (the coarsest level's top-down node, the finest's
bottom-up node merges into O_0), and each middle output also takes its level's input (the skip edge). Every node is
"fast normalized fusion" O = sum(w_i * I_i) / (eps + sum_j w_j) with w_i = ReLU(raw_i), then a depthwise-separable
conv (3x3 depthwise, 1x1 pointwise), BN and the arch's activation. up: nearest x2; down: 2x2 max pooling, stride 2.

The head reads O_0 only, so the last layer builds only its top-down path (its bottom-up nodes would feed nothing:
dead compute, and parameters without gradients that DDP refuses). EfficientDet scaling of the neck: `scale_neck`.

At deploy (`freeze_fusions`, called by model.deploy.deploy_model) the normalized weights become constants: the
largest is folded into the node's depthwise conv (it has no bias, so scaling its weight scales its output), the others
become constant multipliers relative to it, and an input whose weight is exactly 0 is left out of the graph. The
finest level's lateral conv (linear, one consumer) takes its node's multiplier too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Neck
from .blocks import ConvBNAct, act_layer, make_divisible

EPS = 1e-4  # EfficientDet's epsilon: keeps the division stable when every weight is near 0

# EfficientDet's Table 1 (D0..D7): BiFPN width and depth per compound coefficient. The paper gives the formulas
# W = 64 * 1.35^phi, D = 3 + phi, but rounds the widths by hand (112 at phi 2 where the nearest multiple of 8 is 120)
# and caps the depth at 8: the table is what the published models use.
EFFICIENTDET_WIDTH = (64, 88, 112, 160, 224, 288, 384, 384)
EFFICIENTDET_DEPTH = (3, 4, 5, 6, 7, 7, 8, 8)
WIDTH_BASE, DEPTH_BASE, WIDTH_RATE = 64, 3, 1.35


def scale_neck(neck: Neck, phi: float) -> Neck:
    """The neck at compound coefficient phi, relative to `neck` as EfficientDet's D0 (64 wide, 3 deep): integer phi
    0..7 follow EfficientDet's table as ratios to D0 (D0 itself gives exactly the table); other phi the paper's
    formulas, widths rounded to multiples of 8, depth 3 + phi rounded up, at least 1."""
    if phi == 0:
        return neck
    if float(phi).is_integer() and 0 <= phi < len(EFFICIENTDET_WIDTH):
        w = neck.width * EFFICIENTDET_WIDTH[int(phi)] / WIDTH_BASE
        d = neck.repeats + EFFICIENTDET_DEPTH[int(phi)] - DEPTH_BASE
    else:
        w = neck.width * WIDTH_RATE ** phi
        d = neck.repeats + math.ceil(phi)
    return neck.replace(width=make_divisible(w), repeats=max(1, d))


class Fusion(nn.Module):
    """Fast normalized fusion of `n` same-shaped inputs: sum(w_i x_i) / (eps + sum w), w = ReLU(raw)."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def normalized(self) -> torch.Tensor:
        w = F.relu(self.weight)
        return w / (EPS + w.sum())

    def forward(self, xs):
        w = self.normalized()
        out = w[0] * xs[0]
        for i in range(1, len(xs)):
            out = out + w[i] * xs[i]
        return out


class ConstantFusion(nn.Module):
    """A frozen Fusion: constant multipliers (Python floats, so export sees constants); 1.0 adds the input as is,
    0.0 leaves it out."""

    def __init__(self, scales):
        super().__init__()
        self.scales = [float(s) for s in scales]

    def forward(self, xs):
        terms = [x if s == 1.0 else x * s for s, x in zip(self.scales, xs) if s != 0.0]
        if not terms:  # every weight 0: the node sees zeros, as the trained Fusion does
            return xs[0] * 0.0
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out


class Node(nn.Module):
    """One BiFPN node: fusion, then 3x3 depthwise conv -> 1x1 conv -> BN -> act."""

    def __init__(self, n_inputs: int, width: int, act: str):
        super().__init__()
        self.fusion = Fusion(n_inputs)
        self.conv = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False),
            nn.Conv2d(width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            act_layer(act),
        )

    def forward(self, xs):
        return self.conv(self.fusion(xs))


def up(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


def down(x):
    return F.max_pool2d(x, 2, 2)


class BiFPNLayer(nn.Module):
    """One BiFPN layer over n levels (finest first); `bottom_up` False builds the top-down path only and returns
    [O_0] alone."""

    def __init__(self, n: int, width: int, act: str, bottom_up: bool = True):
        super().__init__()
        self.n = n
        # td[i] is T_i for i = 1 .. n-2 and O_0 for i = 0 (index = level)
        self.td = nn.ModuleList(Node(2, width, act) for _ in range(n - 1))
        # bu[i - 1] is O_i for i = 1 .. n-1: three inputs (P_i, T_i, down(O_i-1)) except at the coarsest level
        self.bu = nn.ModuleList(Node(3 if i < n - 1 else 2, width, act) for i in range(1, n)) if bottom_up else None

    def forward(self, p):
        n = self.n
        t = [None] * n
        t[n - 1] = p[n - 1]
        for i in range(n - 2, -1, -1):
            t[i] = self.td[i]([p[i], up(t[i + 1])])
        if self.bu is None:
            return [t[0]]
        out = [t[0]]
        for i in range(1, n):
            inputs = [p[i], t[i], down(out[-1])] if i < n - 1 else [p[i], down(out[-1])]
            out.append(self.bu[i - 1](inputs))
        return out


class BiFPN(nn.Module):
    """Backbone features (finest first) -> the finest output of `neck.repeats` BiFPN layers (width channels)."""

    def __init__(self, in_channels: list[int], neck: Neck, act: str):
        super().__init__()
        w = neck.width
        self.lateral = nn.ModuleList(ConvBNAct(c, w, 1, act=None) if c != w else nn.Identity() for c in in_channels)
        n = len(neck.levels)
        self.layers = nn.ModuleList(BiFPNLayer(n, w, act, bottom_up=r < neck.repeats - 1)
                                    for r in range(neck.repeats))
        self.out_channels = w

    def forward(self, feats):
        p = [lat(x) for lat, x in zip(self.lateral, feats)]
        for layer in self.layers:
            p = layer(p)
        return p[0]


def fusion_weights(module: nn.Module) -> list[dict]:
    """What each trained fusion learned: per node, its inputs (EfficientDet's names, level 0 the finest: Pi the
    layer's input at level i (the backbone's lateral in layer 0, the previous layer's output after), Ti the top-down
    intermediate, Oi the layer's output) and their normalized weights w_i / (eps + sum w), which sum to ~1. An input
    whose weight went to ~0 is one the network learned to leave out (EfficientDet's point of learned weights)."""
    rows = []
    for name, neck in module.named_modules():
        if not isinstance(neck, BiFPN):
            continue
        for r, layer in enumerate(neck.layers):
            n = layer.n
            nodes = [(f"T{i}" if i else "O0", layer.td[i], [f"P{i}", f"up(T{i + 1})" if i + 1 < n - 1 else
                                                            f"up(P{i + 1})"]) for i in range(n - 2, -1, -1)]
            if layer.bu is not None:
                nodes += [(f"O{i}", layer.bu[i - 1], [f"P{i}", f"T{i}", f"down(O{i - 1})"] if i < n - 1 else
                           [f"P{i}", f"down(O{i - 1})"]) for i in range(1, n)]
            for node_name, node, inputs in nodes:
                if isinstance(node.fusion, Fusion):
                    w = node.fusion.normalized().detach().tolist()
                    rows.append({"module": f"{name}.layers.{r}" if name else f"layers.{r}", "layer": r,
                                 "node": node_name, "inputs": inputs, "weights": [round(x, 4) for x in w]})
    return rows


def fusions(module: nn.Module):
    """Every trainable Fusion below `module`, with its qualified name."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, Fusion)]


@torch.no_grad()
def freeze_fusions(module: nn.Module) -> nn.Module:
    """In place: each Node's Fusion becomes a ConstantFusion, its largest weight folded into the depthwise conv that
    follows (exact: the conv is linear and has no bias). Call on an eval copy (deploy_model does)."""
    for m in module.modules():
        if isinstance(m, Node) and isinstance(m.fusion, Fusion):
            a = m.fusion.normalized()
            p = int(torch.argmax(a))
            if a[p] > 0:
                m.conv[0].weight.mul_(a[p])
                a = a / a[p]
                a[p] = 1.0  # exactly: the pivot input is added as it is
            m.fusion = ConstantFusion(a.tolist())
    for m in module.modules():
        if isinstance(m, BiFPN):
            _fold_into_lateral(m)
    return module


def _fold_into_lateral(neck: BiFPN):
    """The finest level's lateral (1x1 conv + BN, linear) feeds one node only (the first layer's O_0): its constant
    multiplier goes into the BN's affine, hence into the conv once BN is folded. TFLite's converter folds a constant MUL
    into a linear conv before it anyway, so the deploy graph then has the weights the file has."""
    lat, node = neck.lateral[0], neck.layers[0].td[0]
    s = node.fusion.scales[0]
    if not isinstance(lat, ConvBNAct) or not isinstance(lat[2], nn.Identity) or s in (0.0, 1.0):
        return
    bn = lat[1]
    if not bn.affine:
        return
    bn.weight.mul_(s)
    bn.bias.mul_(s)
    node.fusion.scales[0] = 1.0


class PackedNeck(nn.Module):
    """A neck as a one-input module, so a LUT can time it like any other part (the TFLite signature of a part has one
    input): its level inputs arrive packed channels-last, level after level, in one (N, L, 1, 1) tensor; each is
    sliced and reshaped back (SLICE + RESHAPE: copies of a few hundred KB, small beside the neck's convs)."""

    def __init__(self, neck: BiFPN, shapes):
        super().__init__()
        self.neck, self.shapes = neck, [tuple(int(v) for v in s) for s in shapes]

    @staticmethod
    def packed_len(shapes) -> int:
        return sum(h * w * c for h, w, c in shapes)

    def forward(self, x):
        flat, feats, o = x.flatten(1), [], 0
        for h, w, c in self.shapes:
            feats.append(flat[:, o:o + h * w * c].unflatten(1, (h, w, c)).permute(0, 3, 1, 2))
            o += h * w * c
        return self.neck(feats)
