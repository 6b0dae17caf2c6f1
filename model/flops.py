"""Parameters, MACs and FLOPs with torch.utils.flop_counter (no hand counting), split backbone / head.

FlopCounterMode counts 2 FLOPs per multiply-accumulate of conv, transposed conv and matmul ops (grouped and
depthwise convs included, through the weight shape); BatchNorm, activations and adds are not counted, as is usual
in the pose and NAS literature. MACs = FLOPs / 2.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .arch import Arch
from .net import PoseNet, build


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def count_flops(net: PoseNet | Arch, input_size: tuple[int, int] | None = None) -> dict:
    """{'params', 'params_backbone', 'params_head', 'flops', 'flops_backbone', 'flops_head', 'macs', ...};
    with a neck also 'params_neck', 'flops_neck', 'macs_neck'."""
    if isinstance(net, Arch):
        net = build(net)
    h, w = input_size or net.arch.input_size
    was_training = net.training
    net.eval()
    with FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, h, w))
    net.train(was_training)
    by_module = fc.get_flop_counts()
    total = fc.get_total_flops()
    root = type(net).__name__
    backbone = sum(by_module.get(f"{root}.backbone", {}).values())
    head = sum(by_module.get(f"{root}.head", {}).values())
    out = {
        "input_size": [h, w],
        "params": _params(net), "params_backbone": _params(net.backbone), "params_head": _params(net.head),
        "flops": int(total), "flops_backbone": int(backbone), "flops_head": int(head),
    }
    if getattr(net, "neck", None) is not None:
        out["params_neck"] = _params(net.neck)
        out["flops_neck"] = int(sum(by_module.get(f"{root}.neck", {}).values()))
    out.update({k.replace("flops", "macs"): v // 2 for k, v in out.items() if k.startswith("flops")})
    return out
