"""EfficientNet compound scaling (Tan & Le 2019) of an arch: depth alpha^phi, width beta^phi, input gamma^phi.

Depth repeats blocks per stage (a stage = consecutive blocks of one width; new blocks copy the stage's last op at
stride 1); widths of the stem and the blocks round to multiples of 8; the input rounds to a multiple of 16 (and of the
backbone stride). The slim head keeps its widths, as EfficientPose-A/B/C do.
"""

from __future__ import annotations

import math

from .arch import Arch, Layer, from_dict
from .blocks import make_divisible

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


def stages(arch: Arch) -> list[list[Layer]]:
    """Group blocks into stages: a new stage starts at a stride-2 block or a width change."""
    out: list[list[Layer]] = []
    prev = None
    for layer in arch.blocks:
        if not out or layer.stride != 1 or layer.out != prev:
            out.append([])
        out[-1].append(layer)
        prev = layer.out
    return out


def compound_scale(arch: Arch, phi: float, alpha=ALPHA, beta=BETA, gamma=GAMMA) -> Arch:
    if phi == 0:
        return arch.copy()
    d, w, r = alpha ** phi, beta ** phi, gamma ** phi
    width = {}  # old width -> new width, so a dwconv/skip keeps "in == out"

    def scale_w(c: int) -> int:
        return width.setdefault(c, make_divisible(c * w))

    stem = [Layer(x.op, scale_w(x.out), x.stride, x.act) for x in arch.stem]
    blocks = []
    for stage in stages(arch):
        n = math.ceil(len(stage) * d)
        grown = stage + [Layer(stage[-1].op, stage[-1].out, 1)] * (n - len(stage))
        blocks += [Layer(x.op, scale_w(x.out), x.stride, x.act) for x in grown]
    tail = [Layer(x.op, scale_w(x.out), x.stride, x.act) for x in arch.tail]
    step = math.lcm(16, arch.backbone_stride)
    size = [max(step, round(s * r / step) * step) for s in arch.input_size]
    meta = dict(arch.meta)
    meta.pop("reported", None)  # the authors' figures belong to the unscaled arch
    meta["compound_scaling"] = {"base": arch.name, "phi": phi, "alpha": alpha, "beta": beta, "gamma": gamma}
    d_new = arch.to_dict() | {"name": f"{arch.name}-phi{phi:g}", "input_size": size,
                              "stem": [x.to_dict() for x in stem], "blocks": [x.to_dict() for x in blocks],
                              "tail": [x.to_dict() for x in tail], "meta": meta}
    return from_dict(d_new)
