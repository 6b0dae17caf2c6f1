"""The slim pose heads of the EfficientPose paper, taking stride-16 (or 32) features to stride-4 heatmaps.

- plain: [ConvTranspose2d(k4, s2, p1) -> BN -> ReLU] per deconv width.
- mbv1:  MobileNetV1-style separable: depthwise ConvTranspose2d -> BN -> ReLU -> 1x1 conv -> BN -> ReLU.
- mbv2:  MobileNetV2-style: 1x1 expand -> BN -> ReLU -> depthwise ConvTranspose2d -> BN -> ReLU -> 1x1 project -> BN.
Then SIC (a 3x3 depthwise conv + ReLU, when enabled) and a 1x1 conv (with bias) to the joints.
"""

from __future__ import annotations

from torch import nn

from .arch import Head
from .blocks import ConvBNAct, make_divisible


def deconv_padding(kernel: int) -> tuple[int, int]:
    """(padding, output_padding) so that a stride-2 transposed conv exactly doubles H and W."""
    return {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel]


class DeconvBNAct(nn.Sequential):
    """ConvTranspose2d (stride 2, no bias) -> BN -> ReLU; groups == channels makes it depthwise."""

    def __init__(self, cin, cout, kernel, groups=1):
        pad, out_pad = deconv_padding(kernel)
        super().__init__(
            nn.ConvTranspose2d(cin, cout, kernel, 2, pad, out_pad, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def _up_unit(kind: str, cin: int, cout: int, kernel: int, expand: int) -> nn.Module:
    if kind == "plain":
        return DeconvBNAct(cin, cout, kernel)
    if kind == "mbv1":
        return nn.Sequential(DeconvBNAct(cin, cin, kernel, groups=cin), ConvBNAct(cin, cout, 1))
    mid = make_divisible(cin * expand)
    return nn.Sequential(ConvBNAct(cin, mid, 1), DeconvBNAct(mid, mid, kernel, groups=mid),
                         ConvBNAct(mid, cout, 1, act=None))


class PoseHead(nn.Module):
    def __init__(self, cin: int, num_joints: int, head: Head):
        super().__init__()
        ups = []
        for cout in head.deconv:
            ups.append(_up_unit(head.type, cin, cout, head.kernel, head.expand))
            cin = cout
        self.up = nn.Sequential(*ups)
        # SIC: a cheap 3x3 depthwise conv that widens the receptive field before the joint classifier.
        self.sic = (nn.Sequential(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.ReLU(inplace=True))
                    if head.sic else nn.Identity())
        self.final = nn.Conv2d(cin, num_joints, 1)

    def forward(self, x):
        return self.final(self.sic(self.up(x)))
