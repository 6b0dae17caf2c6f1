"""PoseNet: one network class, built entirely from an Arch (the arch file)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .arch import Arch, load
from .bifpn import BiFPN
from .blocks import make_block, make_layer
from .heads import PoseHead


class Backbone(nn.Module):
    def __init__(self, arch: Arch):
        super().__init__()
        c = 3
        parts = {}
        for part, make in (("stem", make_layer), ("blocks", make_block), ("tail", make_layer)):
            modules = []
            for layer in getattr(arch, part):
                modules.append(make(layer.spec, c, layer.out, layer.stride, arch.block_act(layer)))
                c = layer.out
            parts[part] = nn.Sequential(*modules)
        self.stem, self.blocks, self.tail = parts["stem"], parts["blocks"], parts["tail"]
        self.out_channels = c
        self.taps = sorted(arch.level_taps().values())  # layer indices whose outputs a neck reads

    def forward(self, x):
        """The last feature map; with a neck, the list of the neck's levels (finest first)."""
        if not self.taps:
            return self.tail(self.blocks(self.stem(x)))
        feats = []
        for i, m in enumerate([*self.stem, *self.blocks, *self.tail][:self.taps[-1] + 1]):
            x = m(x)
            if i in self.taps:
                feats.append(x)
        return feats


class PoseNet(nn.Module):
    """Image (N, 3, H, W), normalized -> heatmaps (N, J, H/4, W/4)."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        self.backbone = Backbone(arch)
        if arch.neck is None:  # no attribute at all: the state dict of a neckless net is what it always was
            self.head = PoseHead(self.backbone.out_channels, arch.num_joints, arch.head)
        else:
            self.neck = BiFPN([c for _, _, c in arch.level_shapes().values()], arch.neck, arch.act)
            self.head = PoseHead(self.neck.out_channels, arch.num_joints, arch.head)
        init_weights(self)

    def forward(self, x):
        if self.arch.neck is None:
            return self.head(self.backbone(x))
        return self.head(self.neck(self.backbone(x)))


def init_weights(net: nn.Module):
    """Kaiming for convs, small normal for the transposed convs and the joint classifier (SimpleBaseline)."""
    for m in net.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, std=0.001)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if isinstance(net, PoseNet):
        nn.init.normal_(net.head.final.weight, std=0.001)


def build(arch: Arch | str | Path) -> PoseNet:
    """The one verb: arch (object, file path, or shipped name) -> nn.Module."""
    return PoseNet(arch if isinstance(arch, Arch) else load(arch))
