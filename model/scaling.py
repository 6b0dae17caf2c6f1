"""EfficientNet compound scaling (Tan & Le 2019) of an arch: depth alpha^phi, width beta^phi, input gamma^phi.

Depth repeats blocks per stage (`Arch.stages`; new blocks copy the stage's last block at stride 1); widths of the
stem and the blocks round to multiples of 8; the input rounds to a multiple of 16 (and of the backbone stride). The
slim head keeps its widths, as EfficientPose-A/B/C do. A BiFPN neck scales as EfficientDet's (model.bifpn.scale_neck:
width 64 * 1.35^phi, depth 3 + phi, as the paper's table rounds them).
"""

from __future__ import annotations

import math

from .arch import Arch

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


def compound_scale(arch: Arch, phi: float, alpha=ALPHA, beta=BETA, gamma=GAMMA) -> Arch:
    from .bifpn import scale_neck
    from .blocks import make_divisible  # model.blocks imports torch; `python -m model --help` does not need it

    if phi == 0:
        return arch
    d, w, r = alpha ** phi, beta ** phi, gamma ** phi
    width = {}  # old width -> new width, so a dwconv/skip keeps "in == out"

    def scale_w(layers):
        return [x.replace(out=width.setdefault(x.out, make_divisible(x.out * w))) for x in layers]

    stem = scale_w(arch.stem)
    blocks, start = [], 0
    for stage in arch.stages:
        layers = arch.blocks[start:start + stage.layers]
        start += stage.layers
        n = math.ceil(stage.layers * d)
        blocks += scale_w(layers + (layers[-1].replace(stride=1),) * (n - stage.layers))
    tail = scale_w(arch.tail)
    step = math.lcm(16, arch.backbone_stride)
    size = tuple(max(step, round(s * r / step) * step) for s in arch.input_size)
    meta = {k: v for k, v in arch.meta.items() if k != "reported"}  # the authors' figures are the unscaled arch's
    meta["compound_scaling"] = {"base": arch.name, "phi": phi, "alpha": alpha, "beta": beta, "gamma": gamma}
    neck = scale_neck(arch.neck, phi) if arch.neck else None
    return arch.replace(name=f"{arch.name}-phi{phi:g}", input_size=size, stem=stem, blocks=blocks, tail=tail,
                        meta=meta, neck=neck)
