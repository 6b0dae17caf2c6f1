"""One forward pass with temporary module hooks: how stages look inside a network (per-module inputs, outputs,
shapes) without changing it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


@torch.no_grad()
def forward_with_hooks(net: nn.Module, x: torch.Tensor, hooks: Iterable[tuple[nn.Module, Callable]],
                       pre: bool = False):
    """Run net(x) once, without gradients, with each (module, fn) attached as a forward hook (a forward-pre hook
    if `pre`); the hooks are removed afterwards, also when the forward raises. Returns net's output."""
    handles = [m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m, fn in hooks]
    try:
        return net(x)
    finally:
        for h in handles:
            h.remove()
