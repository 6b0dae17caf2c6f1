"""The supernet: the space's fixed stem and head around one mixed op per searchable layer.

Every candidate is built by `model.blocks.make_block`, the stem by `model.blocks.make_layer` and the head by
`model.heads.PoseHead`, so the derived network (`model.net.build`) is made of the very same modules.
"""

from __future__ import annotations

import torch
from torch import nn

from model.blocks import make_block, make_layer
from model.heads import PoseHead
from model.net import init_weights
from model.space import SearchSpace


class MixedOp(nn.Module):
    """Eq. 3: output = sum_i p_i * op_i(x) over the layer's candidates; `keep` drops paths (w steps only)."""

    def __init__(self, cin: int, cout: int, stride: int, candidates: list[str], act: str):
        super().__init__()
        self.candidates = list(candidates)
        self.ops = nn.ModuleList(make_block(op, cin, cout, stride, act) for op in candidates)

    def forward(self, x, p, keep=None):
        if keep is not None:  # dropping-path: only the kept candidates run, their weights renormalised
            idx = keep.nonzero().flatten().tolist()
            p = p[idx] / p[idx].sum()
            return sum(p[j] * self.ops[i](x) for j, i in enumerate(idx))
        return sum(p[i] * op(x) for i, op in enumerate(self.ops))


class SuperNet(nn.Module):
    """Image (N, 3, H, W) normalized -> heatmaps (N, J, H/4, W/4), each searchable layer a MixedOp."""

    def __init__(self, space: SearchSpace, temperature: float = 1.0):
        super().__init__()
        self.space = space
        self.temperature = temperature
        c = 3
        stem = []
        for layer in space.stem:
            stem.append(make_layer(layer.op, c, layer.out, layer.stride, layer.act or space.act))
            c = layer.out
        self.stem = nn.Sequential(*stem)
        self.layers = space.layers()
        self.mixed = nn.ModuleList(MixedOp(x.cin, x.cout, x.stride, x.candidates, space.act) for x in self.layers)
        self.head = PoseHead(self.layers[-1].cout, space.num_joints, space.head)
        init_weights(self)
        nn.init.normal_(self.head.final.weight, std=0.001)
        # Architecture parameters alpha (one vector per layer; skip is a candidate only where shapes allow).
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(len(x.candidates))) for x in self.layers)

    def weights(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("alphas.")]

    def probs(self) -> list[torch.Tensor]:
        """Eq. 2: p = softmax(alpha / temperature) per layer."""
        return [torch.softmax(a / self.temperature, 0) for a in self.alphas]

    def forward(self, x, keep: list[torch.Tensor] | None = None, probs: list[torch.Tensor] | None = None):
        probs = self.probs() if probs is None else probs
        x = self.stem(x)
        for i, m in enumerate(self.mixed):
            x = m(x, probs[i], None if keep is None else keep[i])
        return self.head(x)

    def choices(self) -> list[str]:
        """Derive: the argmax candidate of every layer."""
        return [x.candidates[int(a.argmax())] for x, a in zip(self.layers, self.alphas)]

    def sample_keep(self, drop: float, gen: torch.Generator) -> list[torch.Tensor]:
        """Dropping-path mask: each candidate dropped with probability `drop`, at least one kept per layer."""
        keep = []
        for a in self.alphas:
            k = torch.rand(len(a), generator=gen) >= drop
            if not k.any():
                k[torch.randint(len(a), (1,), generator=gen)] = True
            keep.append(k)
        return keep
