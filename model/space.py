"""Search-space files: per stage the number of layers, width and stride, and the candidate ops.

A space fixes everything but the op of each searchable layer; `arch_for(choices)` turns one op per layer into
an Arch. The first layer of a stage carries the stride and width change, so `skip` is never a candidate there;
a space's stages are exactly the `Arch.stages` of each arch it makes (a stage must begin with a stride or width
change). The LUT keys of a space are those of its layers at the space's nominal input size (the deployment size),
whatever input a search trains the supernet at.

A space may also offer the neck as a choice (an optional `neck:` section, issue 29): its `candidates` are `none`
(today's path: the backbone's last map into the space's `head`) and BiFPN widths; `type`, `levels` and `repeats`
are fixed, and `head` is the head behind a neck (it reads the neck's finest level, so it needs fewer or no
transposed convs than the space's head). The neck choice is the last entry of a space's `decisions()` and of the
`choices` given to `arch_for`; a space without the section has exactly the decisions, keys and archs it had.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from posekit.errors import UserError, field_error

from .arch import (
    MAX_CHANNELS,
    Arch,
    ArchError,
    Head,
    Layer,
    Neck,
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
NO_NECK = "none"


@dataclass(frozen=True)
class SearchLayer:
    index: int
    cin: int
    cout: int
    stride: int
    in_hw: tuple[int, int]
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class NeckChoice:
    """The neck as one searchable decision: `widths` (None = no neck) of a `type` neck over fixed `levels` and
    `repeats`; with a neck the net ends in `head` (the space's head serves the no-neck candidate)."""

    type: str
    levels: tuple[int, ...]
    repeats: int
    widths: tuple[int | None, ...]
    head: Head

    @property
    def candidates(self) -> tuple[str, ...]:
        return tuple(NO_NECK if w is None else f"{self.type}_w{w}" for w in self.widths)

    def neck(self, name: str) -> Neck | None:
        w = self.widths[self.candidates.index(name)]
        return None if w is None else Neck(self.type, self.levels, w, self.repeats)


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
    neck: NeckChoice | None = None
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
        # Validate by building one arch of the space (one per neck candidate): shapes, stride and head must fit.
        for name in self.neck.candidates if self.neck else [None]:
            try:
                self.arch_for(self.first_choices(name))
            except ArchError as e:
                if name in (None, NO_NECK):
                    raise e.at(src) from None
                # a neck candidate's arch: its head is the neck section's, its neck fields are the section's
                where = f"neck.{e.field}" if e.field.startswith("head") else e.field
                raise field_error(src, where, f"with neck candidate {name}: {e.msg}") from None

    # ---- layers and archs --------------------------------------------------------------------------
    def layers(self) -> list[SearchLayer]:
        return list(self._layers)

    def decisions(self) -> list[tuple[str, ...]]:
        """The candidates of every decision: one per searchable layer, then the neck's when the space offers it."""
        return [layer.candidates for layer in self._layers] + ([self.neck.candidates] if self.neck else [])

    def arch_for(self, choices: list[str], name: str | None = None, meta: dict | None = None) -> Arch:
        """One candidate per decision (`decisions()`: the layers' ops, then the neck's candidate if offered)."""
        n = len(self._layers)
        if len(choices) != n + bool(self.neck):
            raise ValueError(f"{len(choices)} choices for {n} layers" + (" and the neck" if self.neck else ""))
        blocks = []
        for layer, op in zip(self._layers, choices):
            if op not in layer.candidates:
                raise ValueError(f"layer {layer.index}: {op!r} is not a candidate here ({list(layer.candidates)})")
            blocks.append(Layer(op, layer.cout, layer.stride))
        neck, head = None, self.head
        if self.neck:
            if choices[n] not in self.neck.candidates:
                raise ValueError(f"neck: {choices[n]!r} is not a candidate ({list(self.neck.candidates)})")
            neck = self.neck.neck(choices[n])
            head = self.head if neck is None else self.neck.head
        return Arch(name or f"{self.name}-derived", self.num_joints, self.input_size, self.stem, blocks, head,
                    (), self.act, meta or {}, neck)

    def first_choices(self, neck: str | None = None) -> list[str]:
        """Each layer's first candidate, and the neck's first candidate (or `neck`) when the space offers it."""
        ops = [layer.candidates[0] for layer in self._layers]
        return ops + ([neck or self.neck.candidates[0]] if self.neck else [])

    def random_choices(self, rng: random.Random) -> list[str]:
        return [rng.choice(c) for c in self.decisions()]

    def lut_keys(self) -> list[str]:
        """Every LUT key this space can ask for: each (layer, candidate) plus the fixed parts (with a neck choice,
        those of every neck candidate: its neck and the head behind it)."""
        keys = []
        for layer in self._layers:
            for op in layer.candidates:
                keys.append(block_key(op, (*layer.in_hw, layer.cin), layer.cout, layer.stride))
        fixed = []
        for name in self.neck.candidates if self.neck else [None]:
            fixed += [k for k in fixed_keys(self.arch_for(self.first_choices(name))) if k not in fixed]
        return sorted(set(keys)) + fixed

    @property
    def sha256(self) -> str:
        """Identity of the space by what a LUT must cover (its keys), not by file formatting."""
        return hashlib.sha256("\n".join(self.lut_keys()).encode()).hexdigest()[:16]


def space_from_dict(d: dict, src=None) -> SearchSpace:
    """Validate a parsed search-space mapping; every fault raises UserError naming the file and field."""
    if not isinstance(d, dict):
        raise field_error(src, "<top>", "expected a mapping")
    check_unknown(d, ("name", "num_joints", "input_size", "act", "stem", "stages", "candidates", "head", "neck"),
                  src)
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
                       parse_head(require(d, "head", src), src), src, parse_neck_choice(d.get("neck"), src))


def parse_neck_choice(n, src) -> NeckChoice | None:
    """The optional `neck:` section: {type, levels, repeats, candidates: [none | width, ...], head}."""
    if n is None:
        return None
    if not isinstance(n, dict):
        raise field_error(src, "neck", "expected a mapping {type, levels, repeats, candidates, head}")
    check_unknown(n, ("type", "levels", "repeats", "candidates", "head"), src, "neck.")
    cands = require(n, "candidates", src, "neck.")
    if not isinstance(cands, list) or not cands:
        raise field_error(src, "neck.candidates", f"expected a non-empty list of none and widths, got {cands!r}")
    widths = []
    for i, c in enumerate(cands):
        if c is None or c == NO_NECK:
            w = None
        else:
            try:
                w = check_int(c, f"neck.candidates[{i}]")
            except ArchError as e:
                raise field_error(src, e.field, f"none or a width (an integer >= 1), got {c!r}") from None
            if w > MAX_CHANNELS:  # bounded before anything is built, as any arch's layer
                raise field_error(src, f"neck.candidates[{i}]", f"{w} channels: more than the {MAX_CHANNELS} a "
                                                               f"layer may have")
        if w in widths:
            raise field_error(src, f"neck.candidates[{i}]", f"{c!r} is listed twice")
        widths.append(w)
    try:  # type, levels and repeats are checked as any arch's neck (one with the first width offered)
        Neck(require(n, "type", src, "neck."), require(n, "levels", src, "neck."),
             next((w for w in widths if w is not None), 64), n.get("repeats", 3))
    except ArchError as e:
        raise e.at(src, "neck.") from None
    head = parse_head(require(n, "head", src, "neck."), src, "neck.head")
    return NeckChoice(n["type"], tuple(n["levels"]), n.get("repeats", 3), tuple(widths), head)


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
