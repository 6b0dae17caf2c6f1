"""Search-space files: per stage the number of layers, width and stride, and the candidate ops.

A space fixes everything but the op of each searchable layer; `arch_for(choices)` turns one op per layer into
an Arch. The first layer of a stage carries the stride and width change, so `skip` is never a candidate there.
The LUT keys of a space are those of its layers at the space's nominal input size (the deployment size),
whatever input a search trains the supernet at.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from posekit.errors import field_error

from .arch import Arch, Layer, _head, _int, _layer, _list, _req, from_dict, parse_block_op, read_mapping

SPACE_DIR = Path(__file__).parent / "spaces"


@dataclass
class SearchLayer:
    index: int
    cin: int
    cout: int
    stride: int
    in_hw: tuple[int, int]
    candidates: list[str]


class SearchSpace:
    def __init__(self, d: dict, src=None):
        self.src = src
        self.name = str(d.get("name", Path(src).stem if src else "space"))
        self.num_joints = _int(_req(d, "num_joints", src, ""), src, "num_joints")
        size = _req(d, "input_size", src, "")
        self.input_size = (int(size[0]), int(size[1]))
        self.act = d.get("act", "relu")
        self.stem = [_layer(x, src, f"stem[{i}]", block=False) for i, x in enumerate(_list(d, "stem", src))]
        self.head = _head(_req(d, "head", src, ""), src)
        self.candidates = [str(c) for c in _list(d, "candidates", src)]
        for i, c in enumerate(self.candidates):
            try:
                parse_block_op(c)
            except ValueError as e:
                raise field_error(src, f"candidates[{i}]", str(e)) from None
        self.stages = []
        for i, s in enumerate(_list(d, "stages", src)):
            n = _int(_req(s, "layers", src, f"stages[{i}]."), src, f"stages[{i}].layers")
            out = _int(_req(s, "out", src, f"stages[{i}]."), src, f"stages[{i}].out")
            stride = _int(s.get("stride", 1), src, f"stages[{i}].stride")
            if stride not in (1, 2):
                raise field_error(src, f"stages[{i}].stride", f"must be 1 or 2, got {stride}")
            self.stages.append((n, out, stride))
        # Validate by building one arch of the space: shapes, stride and head must fit.
        from_dict(self.arch_for(self._first_choices()).to_dict(), src)

    # ---- layers and archs --------------------------------------------------------------------------
    def layers(self) -> list[SearchLayer]:
        h, w = self.input_size
        c = 3
        for layer in self.stem:
            h, w, c = -(-h // layer.stride), -(-w // layer.stride), layer.out
        out = []
        for n, cout, stride in self.stages:
            for j in range(n):
                s = stride if j == 0 else 1
                cands = [x for x in self.candidates if x != "skip" or (s == 1 and c == cout)]
                if not cands:
                    raise field_error(self.src, "candidates", f"layer {len(out)} changes shape (stride {s}, "
                                      f"{c} -> {cout} channels), so it needs a candidate other than skip")
                out.append(SearchLayer(len(out), c, cout, s, (h, w), cands))
                h, w, c = -(-h // s), -(-w // s), cout
        return out

    def arch_for(self, choices: list[str], name: str | None = None, meta: dict | None = None) -> Arch:
        layers = self.layers()
        if len(choices) != len(layers):
            raise ValueError(f"{len(choices)} choices for {len(layers)} layers")
        blocks = []
        for layer, op in zip(layers, choices):
            if op not in layer.candidates:
                raise ValueError(f"layer {layer.index}: {op!r} is not a candidate here ({layer.candidates})")
            blocks.append(Layer(op, layer.cout, layer.stride))
        return Arch(name or f"{self.name}-derived", self.num_joints, self.input_size,
                    [Layer(x.op, x.out, x.stride, x.act) for x in self.stem], blocks, self.head, [], self.act,
                    dict(meta or {}))

    def _first_choices(self) -> list[str]:
        return [layer.candidates[0] for layer in self.layers()]

    def random_choices(self, rng: random.Random) -> list[str]:
        return [rng.choice(layer.candidates) for layer in self.layers()]

    def lut_keys(self) -> list[str]:
        """Every LUT key this space can ask for: each (layer, candidate) plus the fixed parts."""
        from .latency import block_key, fixed_keys

        keys = []
        for layer in self.layers():
            for op in layer.candidates:
                keys.append(block_key(op, (*layer.in_hw, layer.cin), layer.cout, layer.stride))
        any_arch = self.arch_for(self._first_choices())
        return sorted(set(keys)) + fixed_keys(any_arch)

    @property
    def sha256(self) -> str:
        """Identity of the space by what a LUT must cover (its keys), not by file formatting."""
        return hashlib.sha256("\n".join(self.lut_keys()).encode()).hexdigest()[:16]


def resolve_space(path: str | Path) -> Path:
    p = Path(path)
    if p.exists() or p.suffix:
        return p
    return SPACE_DIR / f"{p.name}.yaml"


def load_space(path: str | Path = "default") -> SearchSpace:
    p = resolve_space(path)
    return SearchSpace(read_mapping(p), src=p)
