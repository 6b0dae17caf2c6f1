"""The supernet: the space's fixed stem and head around one mixed op per searchable layer.

Every candidate is built by `model.blocks.make_block`, the stem by `model.blocks.make_layer` and the head by
`model.heads.PoseHead`, so the derived network (`model.net.build`) is made of the very same modules.

Two ways to run a layer:
- all paths (Eq. 3): output = sum_i p_i * op_i(x), every candidate computed (DARTS / the paper);
- sampled paths (default): one candidate per layer per step, so a step costs about one forward/backward of a
  single network. Weight steps draw the path from p; architecture steps draw it with the Gumbel-max trick and pass
  the gradient to alpha straight through a Gumbel-softmax relaxation (GDAS, Dong & Yang 2019; FBNet's
  Gumbel-softmax): the forward multiplies the chosen op by h_k = 1 whose gradient is that of softmax(logits + g).

A space that offers the neck (model.space.NeckChoice) adds one more decision, after the layers, with its own alpha:
candidate `none` is today's path (the last searchable layer's stride-16 map into the space's head), a BiFPN
candidate fuses the features at the neck's levels (the outputs of the last layer at each stride, as
`model.net.Backbone` taps them) and feeds its finest output to the neck section's head. Each candidate has its own
head: the maps they produce differ in stride and width (stride 16 x 96 vs stride 4 x the neck's width), and a head
shared through adapters would be a part no derived net has. Every candidate ends in heatmaps of the same shape, so
the all-paths mode mixes them as Eq. 3 mixes a layer's ops; the derived net (`model.net.build`) is made of the
chosen candidate's neck and head, the same modules.
"""

from __future__ import annotations

import torch
from torch import nn

from model.bifpn import BiFPN
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
        self.decisions = space.decisions()  # the layers' candidates, then the neck's when offered
        self.mixed = nn.ModuleList(MixedOp(x.cin, x.cout, x.stride, x.candidates, space.act) for x in self.layers)
        self.taps: list[int] = []  # with a neck choice: indices into stem + searchable layers whose outputs it reads
        if space.neck is None:  # no neck choice: the modules (and state dict) of every space before issue 29
            self.head = PoseHead(self.layers[-1].cout, space.num_joints, space.head)
            finals = [self.head.final]
        else:
            necks, heads = [], []
            for name in space.neck.candidates:
                a = space.arch_for(space.first_choices(name))
                if a.neck is None:
                    necks.append(nn.Identity())
                    heads.append(PoseHead(self.layers[-1].cout, space.num_joints, a.head))
                else:
                    self.taps = sorted(a.level_taps().values())  # the same for every width
                    necks.append(BiFPN([c for _, _, c in a.level_shapes().values()], a.neck, a.act))
                    heads.append(PoseHead(a.neck.width, space.num_joints, a.head))
            self.necks, self.heads = nn.ModuleList(necks), nn.ModuleList(heads)
            finals = [h.final for h in heads]
        init_weights(self)
        for f in finals:
            nn.init.normal_(f.weight, std=0.001)
        # Architecture parameters alpha (one vector per decision; skip is a candidate only where shapes allow).
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(len(c))) for c in self.decisions)

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
        sampled = paths is not None
        if not sampled:
            probs = self.probs() if probs is None else probs
        feats = []
        if self.taps:
            for j, m in enumerate(self.stem):
                x = m(x)
                if j in self.taps:
                    feats.append(x)
        else:
            x = self.stem(x)
        n_stem = len(self.stem)
        for i, m in enumerate(self.mixed):
            if sampled:
                x = m(x, path=paths[i], gate=None if gates is None else gates[i])
            else:
                x = m(x, probs[i], None if keep is None else keep[i])
            if n_stem + i in self.taps:
                feats.append(x)
        if not hasattr(self, "necks"):
            return self.head(x)
        n = len(self.mixed)
        if sampled:  # the sampled neck candidate only, its gate (value 1) carrying alpha's gradient
            k = paths[n]
            y = self._neck_path(k, x, feats)
            return y if gates is None else gates[n][k] * y
        p = probs[n]
        idx = range(len(p)) if keep is None else keep[n].nonzero().flatten().tolist()
        w = p[list(idx)] / p[list(idx)].sum() if keep is not None else p
        return sum(w[j] * self._neck_path(k, x, feats) for j, k in enumerate(idx))

    def _neck_path(self, k: int, last, feats):
        """Neck candidate k: `none` reads the last map, a neck the tapped levels; then that candidate's head."""
        neck = self.necks[k]
        return self.heads[k](last if isinstance(neck, nn.Identity) else neck(feats))

    def choices(self) -> list[str]:
        """Derive: the argmax candidate of every decision (layers, then the neck's when offered)."""
        return [c[int(a.argmax())] for c, a in zip(self.decisions, self.alphas)]

    def indices(self, choices: list[str]) -> list[int]:
        return [c.index(op) for c, op in zip(self.decisions, choices)]

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
