"""The building blocks an arch file names: conv/BN/act layers and the inverted residual (MBConv)."""

from __future__ import annotations

from torch import nn

from .arch import Op, decode_op, parse_block_op


def act_layer(name: str | None) -> nn.Module:
    if name in (None, "none"):
        return nn.Identity()
    return {"relu": nn.ReLU, "relu6": nn.ReLU6}[name](inplace=True)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm -> activation; the unit every block is made of."""

    def __init__(self, cin, cout, kernel=3, stride=1, groups=1, act="relu"):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            act_layer(act),
        )


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a width to a multiple of `divisor`, never more than 10% below (as in MobileNetV2)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand -> KxK depthwise -> 1x1 linear project, residual when shapes allow."""

    def __init__(self, cin, cout, stride, kernel, expand, act="relu"):
        super().__init__()
        mid = make_divisible(cin * expand) if expand != 1 else cin
        layers = [] if expand == 1 else [ConvBNAct(cin, mid, 1, act=act)]
        layers += [ConvBNAct(mid, mid, kernel, stride, groups=mid, act=act), ConvBNAct(mid, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res else y


def make_block(op: str | Op, cin: int, cout: int, stride: int, act: str | None = "relu") -> nn.Module:
    """Build one searchable block from its decoded op (or string); the only place block ops become modules.
    `act` is the block's activation (after its expand and depthwise convs; the projection stays linear)."""
    op = parse_block_op(op) if isinstance(op, str) else op
    if op.kind == "skip":
        if stride != 1 or cin != cout:
            raise ValueError(f"skip needs stride 1 and in == out, got in {cin}, out {cout}, stride {stride}")
        return nn.Identity()
    return InvertedResidual(cin, cout, stride, op.kernel, op.expand, act)


def make_layer(op: str | Op, cin: int, cout: int, stride: int, act: str | None) -> nn.Module:
    """Build a fixed stem/tail layer: conv_k{K} or dwconv_k{K}, BN, activation."""
    op = decode_op(op) if isinstance(op, str) else op
    if op.kind not in ("conv", "dwconv"):
        raise ValueError(f"{op.name!r} is not a stem/tail layer op")
    return ConvBNAct(cin, cout, op.kernel, stride, groups=cin if op.kind == "dwconv" else 1, act=act)
