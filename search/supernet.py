"""The supernet: the space's fixed stem and head around one mixed op per searchable layer.

Every candidate is built by `model.blocks.make_block`, the stem by `model.blocks.make_layer` and the head by
`model.heads.PoseHead`, so the derived network (`model.net.build`) is made of the very same modules.

Two ways to run a layer:
- all paths (Eq. 3): output = sum_i p_i * op_i(x), every candidate computed (DARTS / the paper);
- sampled paths (default): one candidate per layer per step, so a step costs about one forward/backward of a
  single network. Weight steps draw the path from p; architecture steps draw it with the Gumbel-max trick and pass
  the gradient to alpha straight through a Gumbel-softmax relaxation (GDAS, Dong & Yang 2019; FBNet's
  Gumbel-softmax): the forward multiplies the chosen op by h_k = 1 whose gradient is that of softmax(logits + g).
"""

from __future__ import annotations

import torch
from torch import nn

from model.blocks import make_block, make_layer
from model.heads import PoseHead
from model.net import init_weights
from model.space import SearchSpace


class MixedOp(nn.Module):
    """One searchable layer: its candidates, run all (Eq. 3) or one sampled path."""

    def __init__(self, cin: int, cout: int, stride: int, candidates: list[str], act: str):
        super().__init__()
        self.candidates = list(candidates)
        self.ops = nn.ModuleList(make_block(op, cin, cout, stride, act) for op in candidates)

    def forward(self, x, p=None, keep=None, path: int | None = None, gate=None):
        if path is not None:  # sampled: only the chosen candidate runs; `gate` (value 1) carries alpha's gradient
            y = self.ops[path](x)
            return y if gate is None else gate[path] * y
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
        self.temperature = temperature  # annealed by the loop: p sharpens as the search decides
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

    def logits(self) -> list[torch.Tensor]:
        return [a / self.temperature for a in self.alphas]

    def probs(self, temperature: float | None = None) -> list[torch.Tensor]:
        """Eq. 2: p = softmax(alpha / temperature) per layer (the loop's current temperature by default)."""
        t = self.temperature if temperature is None else temperature
        return [torch.softmax(a / t, 0) for a in self.alphas]

    def forward(self, x, keep: list[torch.Tensor] | None = None, probs: list[torch.Tensor] | None = None,
                paths: list[int] | None = None, gates: list[torch.Tensor] | None = None):
        if paths is not None:
            x = self.stem(x)
            for i, m in enumerate(self.mixed):
                x = m(x, path=paths[i], gate=None if gates is None else gates[i])
            return self.head(x)
        probs = self.probs() if probs is None else probs
        x = self.stem(x)
        for i, m in enumerate(self.mixed):
            x = m(x, probs[i], None if keep is None else keep[i])
        return self.head(x)

    def choices(self) -> list[str]:
        """Derive: the argmax candidate of every layer."""
        return [x.candidates[int(a.argmax())] for x, a in zip(self.layers, self.alphas)]

    def indices(self, choices: list[str]) -> list[int]:
        return [x.candidates.index(op) for x, op in zip(self.layers, choices)]

    def sample_paths(self, gen: torch.Generator) -> list[int]:
        """One candidate per layer drawn from p (weight steps: no gradient to alpha)."""
        with torch.no_grad():
            return [int(torch.multinomial(p, 1, generator=gen)) for p in self.probs()]

    def gumbel_paths(self, gen: torch.Generator) -> tuple[list[int], list[torch.Tensor]]:
        """GDAS: path k = argmax(logits + g) (a draw from p), gate = onehot(k) - soft.detach() + soft with
        soft = softmax(logits + g): value one-hot, gradient that of the Gumbel-softmax."""
        paths, gates = [], []
        for lg in self.logits():
            u = torch.rand(lg.shape, generator=gen).clamp_(1e-9, 1 - 1e-9)
            y = lg - torch.log(-torch.log(u))
            soft = torch.softmax(y, 0)
            k = int(y.argmax())
            hard = torch.zeros_like(soft)
            hard[k] = 1.0
            paths.append(k)
            gates.append(hard - soft.detach() + soft)
        return paths, gates

    def sample_keep(self, drop: float, gen: torch.Generator) -> list[torch.Tensor]:
        """Dropping-path mask: each candidate dropped with probability `drop`, at least one kept per layer."""
        keep = []
        for a in self.alphas:
            k = torch.rand(len(a), generator=gen) >= drop
            if not k.any():
                k[torch.randint(len(a), (1,), generator=gen)] = True
            keep.append(k)
        return keep
