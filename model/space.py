"""Search-space files: per stage the number of layers, width and stride, and the candidate ops.

A space fixes everything but the op of each searchable layer; `arch_for(choices)` turns one op per layer into
an Arch. The first layer of a stage carries the stride and width change, so `skip` is never a candidate there;
a space's stages are exactly the `Arch.stages` of each arch it makes (a stage must begin with a stride or width
change). The LUT keys of a space are those of its layers at the space's nominal input size (the deployment size),
whatever input a search trains the supernet at.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from posekit.errors import UserError, field_error

from .arch import (
    Arch,
    ArchError,
    Head,
    Layer,
    Stage,
    check_int,
    check_unknown,
    from_dict,
    load,
    parse_block_op,
    parse_head,
    parse_layer,
    read_mapping,
    require,
    require_list,
)
from .latency import block_key, fixed_keys

SPACE_DIR = Path(__file__).parent / "spaces"


@dataclass(frozen=True)
class SearchLayer:
    index: int
    cin: int
    cout: int
    stride: int
    in_hw: tuple[int, int]
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class SearchSpace:
    name: str
    num_joints: int
    input_size: tuple[int, int]
    act: str
    stem: tuple[Layer, ...]
    stages: tuple[Stage, ...]
    candidates: tuple[str, ...]
    head: Head
    src: str | Path | None = field(default=None, compare=False)
    _layers: tuple[SearchLayer, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        src = self.src
        for name in ("stem", "stages", "candidates"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.stem:
            raise field_error(src, "stem", "needs at least one layer")
        h, w = self.input_size
        c = self.stem[-1].out
        for layer in self.stem:
            h, w = -(-h // layer.stride), -(-w // layer.stride)
        out = []
        for i, st in enumerate(self.stages):
            if st.stride == 1 and st.out == c:
                raise field_error(src, f"stages[{i}]", f"a stage begins with a stride or width change (stride 1 and "
                                  f"width {c} continue the stage before); merge it into the previous stage")
            for j in range(st.layers):
                s = st.stride if j == 0 else 1
                cands = tuple(x for x in self.candidates if x != "skip" or (s == 1 and c == st.out))
                if not cands:
                    raise field_error(src, "candidates", f"layer {len(out)} changes shape (stride {s}, "
                                      f"{c} -> {st.out} channels), so it needs a candidate other than skip")
                out.append(SearchLayer(len(out), c, st.out, s, (h, w), cands))
                h, w, c = -(-h // s), -(-w // s), st.out
        object.__setattr__(self, "_layers", tuple(out))
        # Validate by building one arch of the space: shapes, stride and head must fit.
        try:
            self.arch_for(self._first_choices())
        except ArchError as e:
            raise e.at(src) from None

    # ---- layers and archs --------------------------------------------------------------------------
    def layers(self) -> list[SearchLayer]:
        return list(self._layers)

    def arch_for(self, choices: list[str], name: str | None = None, meta: dict | None = None) -> Arch:
        if len(choices) != len(self._layers):
            raise ValueError(f"{len(choices)} choices for {len(self._layers)} layers")
        blocks = []
        for layer, op in zip(self._layers, choices):
            if op not in layer.candidates:
                raise ValueError(f"layer {layer.index}: {op!r} is not a candidate here ({list(layer.candidates)})")
            blocks.append(Layer(op, layer.cout, layer.stride))
        return Arch(name or f"{self.name}-derived", self.num_joints, self.input_size, self.stem, blocks, self.head,
                    (), self.act, meta or {})

    def _first_choices(self) -> list[str]:
        return [layer.candidates[0] for layer in self._layers]

    def random_choices(self, rng: random.Random) -> list[str]:
        return [rng.choice(layer.candidates) for layer in self._layers]

    def lut_keys(self) -> list[str]:
        """Every LUT key this space can ask for: each (layer, candidate) plus the fixed parts."""
        keys = []
        for layer in self._layers:
            for op in layer.candidates:
                keys.append(block_key(op, (*layer.in_hw, layer.cin), layer.cout, layer.stride))
        any_arch = self.arch_for(self._first_choices())
        return sorted(set(keys)) + fixed_keys(any_arch)

    @property
    def sha256(self) -> str:
        """Identity of the space by what a LUT must cover (its keys), not by file formatting."""
        return hashlib.sha256("\n".join(self.lut_keys()).encode()).hexdigest()[:16]


def space_from_dict(d: dict, src=None) -> SearchSpace:
    """Validate a parsed search-space mapping; every fault raises UserError naming the file and field."""
    if not isinstance(d, dict):
        raise field_error(src, "<top>", "expected a mapping")
    check_unknown(d, ("name", "num_joints", "input_size", "act", "stem", "stages", "candidates", "head"), src)
    stem = [parse_layer(x, src, f"stem[{i}]") for i, x in enumerate(require_list(d, "stem", src))]
    candidates = [str(c) for c in require_list(d, "candidates", src)]
    for i, c in enumerate(candidates):
        try:
            parse_block_op(c)
        except ValueError as e:
            raise field_error(src, f"candidates[{i}]", str(e)) from None
    stages = []
    for i, st in enumerate(require_list(d, "stages", src)):
        where = f"stages[{i}]."
        if not isinstance(st, dict):
            raise field_error(src, f"stages[{i}]", f"expected a mapping with layers/out/stride, got {st!r}")
        check_unknown(st, ("layers", "out", "stride"), src, where)
        try:
            stages.append(Stage(require(st, "layers", src, where), require(st, "out", src, where),
                                st.get("stride", 1)))
        except ArchError as e:
            raise e.at(src, where) from None
    try:
        size = require(d, "input_size", src)
        if not (isinstance(size, list) and len(size) == 2):
            raise ArchError("input_size", f"expected [H, W], got {size!r}")
        size = (check_int(size[0], "input_size[0]"), check_int(size[1], "input_size[1]"))
        if not stem:
            raise ArchError("stem", "needs at least one layer")
    except ArchError as e:
        raise e.at(src) from None
    return SearchSpace(str(d.get("name", Path(src).stem if src else "space")), require(d, "num_joints", src), size,
                       d.get("act", "relu"), tuple(stem), tuple(stages), tuple(candidates),
                       parse_head(require(d, "head", src), src), src)


def resolve_space(path: str | Path) -> Path:
    p = Path(path)
    if p.exists() or p.suffix:
        return p
    return SPACE_DIR / f"{p.name}.yaml"


def load_space(path: str | Path = "default") -> SearchSpace:
    p = resolve_space(path)
    return space_from_dict(read_mapping(p), src=p)


def reference_arch(name: str, space: SearchSpace, head=None) -> Arch:
    """A shipped arch (e.g. efficientpose_a) with the space's head (or `head`): built from its dict, not mutated.
    The search's reference targets and the closed loop's reference network are this one arch."""
    try:
        a = load(name)
    except FileNotFoundError:
        raise UserError(f"reference arch {name!r}: not found (a shipped name such as efficientpose_a, or a file)") \
            from None
    h = (head or space.head).to_dict()
    d = {**a.to_dict(), "head": h, "name": f"{a.name}-{h['type']}", "meta": {}}
    return from_dict(d)
