"""Architecture as data: the arch file that search, train, convert and device_bench all read.

An arch file (YAML or JSON) looks like::

    name: efficientpose-a
    num_joints: 17
    input_size: [256, 192]          # H, W
    act: relu                       # activation inside the blocks (relu | relu6)
    stem:                           # fixed layers before the searchable blocks
      - {op: conv_k3, out: 32, stride: 2}
      - {op: dwconv_k3, out: 32, stride: 1}
      - {op: conv_k1, out: 16, stride: 1, act: none}
    blocks:                         # EfficientPose / FBNet block strings
      - {op: ir_k3_e6, out: 24, stride: 2}
      - {op: skip, out: 24, stride: 1}
    tail: []                        # optional fixed layers after the blocks (MobileNetV2's 1x1 to 1280)
    head: {type: mbv1, deconv: [64, 32], kernel: 4, sic: true}
    neck: {type: bifpn, levels: [4, 8, 16], width: 64, repeats: 3}   # optional (model/bifpn.py)

Block ops: ``ir_k{K}_e{E}`` is an inverted residual (1x1 expand to E x in, KxK depthwise, 1x1 linear
project; residual when stride 1 and in == out; no expand conv when E == 1). ``skip`` is the identity
and needs stride 1 and in == out. Layer ops (stem/tail): ``conv_k{K}`` (full conv), ``dwconv_k{K}``
(depthwise, out == in), each followed by BN and ``act``. Every layer and block may set ``act`` (relu | relu6 |
none); without it the arch's act applies (a block's act is that of its expand and depthwise convs).

The objects are frozen: every constructor validates (``Arch(...)``, ``Layer(...)``, ``Head(...)``), and a change is
a new object through ``replace()``, which validates again. An op string is decoded once, into ``Layer.spec``.
A stage is a run of blocks of one width: it begins at a stride-2 block or a width change (``Arch.stages``); the
search space describes its archs by the same stages.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from posekit import heatmap, yaml_file
from posekit.errors import UserError, field_error
from posekit.io import atomic_write_text, first_line, require_file

OP_RE = re.compile(r"^(?:(?P<ir>ir)_k(?P<k>[0-9]+)_e(?P<e>[0-9]+)|(?P<kind>conv|dwconv)_k(?P<lk>[0-9]+)|skip)$")
BLOCK_KINDS = ("ir", "skip")
LAYER_KINDS = ("conv", "dwconv")
ACTS = ("relu", "relu6", "none")
ARCH_ACTS = ("relu", "relu6")
HEAD_TYPES = ("plain", "mbv1", "mbv2")
HEAD_KERNELS = (2, 3, 4)
HEATMAP_STRIDE = heatmap.STRIDE  # heatmaps at input / 4: the convention posekit.heatmap defines
# Bounds checked when an Arch is made, before any network is built: a typo (1,000,000 channels) is one line, not an
# attempt to allocate terabytes. EfficientPose-C at phi=7 stays far below each (about 1/50 of the FLOPs bound).
MAX_CHANNELS = 16384  # per layer, expanded width included
MAX_PARAMS = 1_000_000_000  # 4 GB of fp32 weights
MAX_GFLOPS = 2000.0  # per image at the arch's input size
MAX_ACTIVATION_MB = 4096.0  # the largest single fp32 feature map of one image


class ArchError(UserError):
    """An invalid value, named by its field (e.g. ``blocks[3].op``); `at()` adds the file and an outer prefix."""

    def __init__(self, field: str, msg: str):
        self.field, self.msg = field, msg
        super().__init__(f"{field}: {msg}")

    def at(self, src, prefix: str = "") -> UserError:
        return field_error(src, f"{prefix}{self.field}", self.msg)


def check_int(v, where: str, lo: int = 1) -> int:
    """`v` if it is an integer >= lo, else an ArchError naming `where`."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ArchError(where, f"expected an integer >= {lo}, got {v!r}")
    return v


@dataclass(frozen=True)
class Op:
    """A decoded op string: kind 'ir' | 'skip' (blocks) or 'conv' | 'dwconv' (stem/tail layers)."""

    kind: str
    kernel: int = 0
    expand: int = 0

    @property
    def name(self) -> str:
        if self.kind == "skip":
            return "skip"
        return f"ir_k{self.kernel}_e{self.expand}" if self.kind == "ir" else f"{self.kind}_k{self.kernel}"

    @property
    def is_block(self) -> bool:
        return self.kind in BLOCK_KINDS


def decode_op(s: str) -> Op:
    """Decode 'ir_k5_e6' / 'skip' / 'conv_k3' / 'dwconv_k3' into an Op; ValueError with the reason otherwise."""
    m = OP_RE.match(s) if isinstance(s, str) else None
    if not m:
        raise ValueError(f"unknown op {s!r} (expected ir_k<kernel>_e<expansion> or skip for a block, "
                         "conv_k<kernel> or dwconv_k<kernel> for a stem/tail layer)")
    if s == "skip":
        return Op("skip")
    k = int(m["k"] or m["lk"])
    if k < 1 or k % 2 == 0:
        raise ValueError(f"op {s!r}: kernel must be odd")
    if m["ir"]:
        e = int(m["e"])
        if e < 1:
            raise ValueError(f"op {s!r}: expansion must be >= 1")
        return Op("ir", k, e)
    return Op(m["kind"], k)


def parse_block_op(s: str) -> Op:
    """Decode a block op ('ir_k5_e6' / 'skip'); ValueError for anything else."""
    op = decode_op(s)
    if not op.is_block:
        raise ValueError(f"{s!r} is a stem/tail layer op, not a block (expected ir_k<kernel>_e<expansion> or skip)")
    return op


@dataclass(frozen=True)
class Layer:
    """One stem/tail layer or block: op string, output width, stride, act (None: the arch's act)."""

    op: str
    out: int
    stride: int = 1
    act: str | None = None
    spec: Op = field(init=False, repr=False, compare=False)  # `op` decoded, once

    def __post_init__(self):
        try:
            spec = decode_op(self.op)
        except ValueError as e:
            raise ArchError("op", str(e)) from None
        check_int(self.out, "out")
        check_int(self.stride, "stride")
        if self.stride not in (1, 2):
            raise ArchError("stride", f"stride must be 1 or 2, got {self.stride}")
        if self.act is not None and self.act not in ACTS:
            raise ArchError("act", f"unknown activation {self.act!r} (one of {', '.join(ACTS)})")
        object.__setattr__(self, "spec", spec)

    def replace(self, **changes) -> Layer:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {"op": self.op, "out": self.out, "stride": self.stride}
        if self.act is not None:
            d["act"] = self.act
        return d


@dataclass(frozen=True)
class Head:
    type: str = "mbv1"
    deconv: tuple[int, ...] = (64, 32)
    kernel: int = 4
    sic: bool = True
    expand: int = 2  # mbv2 head only: expansion of the 1x1 before the depthwise transposed conv

    def __post_init__(self):
        if self.type not in HEAD_TYPES:
            raise ArchError("type", f"unknown head type {self.type!r} (one of {', '.join(HEAD_TYPES)})")
        if not isinstance(self.deconv, (list, tuple)):
            raise ArchError("deconv", "expected a list of channel widths")  # [] when a neck feeds stride 4
        object.__setattr__(self, "deconv", tuple(check_int(c, f"deconv[{i}]") for i, c in enumerate(self.deconv)))
        check_int(self.kernel, "kernel")
        if self.kernel not in HEAD_KERNELS:
            raise ArchError("kernel", f"transposed-conv kernel must be 2, 3 or 4, got {self.kernel}")
        if not isinstance(self.sic, bool):
            raise ArchError("sic", f"expected true/false, got {self.sic!r}")
        check_int(self.expand, "expand")

    def replace(self, **changes) -> Head:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {"type": self.type, "deconv": list(self.deconv), "kernel": self.kernel, "sic": self.sic}
        if self.type == "mbv2":
            d["expand"] = self.expand
        return d


NECK_TYPES = ("bifpn",)
MAX_NECK_REPEATS = 12  # EfficientDet's D7 has 8 BiFPN layers; phi 8 of model.scaling gives 11


@dataclass(frozen=True)
class Neck:
    """An optional feature-fusion neck between backbone and head (model/bifpn.py): `levels` are backbone strides,
    finest first, each twice the one before; the head reads the finest level's output."""

    type: str = "bifpn"
    levels: tuple[int, ...] = (4, 8, 16)
    width: int = 64
    repeats: int = 3

    def __post_init__(self):
        if self.type not in NECK_TYPES:
            raise ArchError("type", f"unknown neck type {self.type!r} (one of {', '.join(NECK_TYPES)})")
        if not isinstance(self.levels, (list, tuple)) or len(self.levels) < 2:
            raise ArchError("levels", f"expected a list of at least 2 backbone strides, got {self.levels!r}")
        levels = tuple(check_int(v, f"levels[{i}]", 2) for i, v in enumerate(self.levels))
        for i in range(1, len(levels)):
            if levels[i] != 2 * levels[i - 1]:
                raise ArchError(f"levels[{i}]", f"stride {levels[i]} is not twice the level before "
                                f"({levels[i - 1]}): levels are consecutive strides, finest first")
        object.__setattr__(self, "levels", levels)
        check_int(self.width, "width")
        check_int(self.repeats, "repeats")
        if self.repeats > MAX_NECK_REPEATS:
            raise ArchError("repeats", f"expected 1..{MAX_NECK_REPEATS}, got {self.repeats}")

    def replace(self, **changes) -> Neck:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {"type": self.type, "levels": list(self.levels), "width": self.width, "repeats": self.repeats}


@dataclass(frozen=True)
class Stage:
    """`layers` blocks of width `out`; the first carries the stage's stride (the rest have stride 1)."""

    layers: int
    out: int
    stride: int = 1

    def __post_init__(self):
        check_int(self.layers, "layers")
        check_int(self.out, "out")
        check_int(self.stride, "stride")
        if self.stride not in (1, 2):
            raise ArchError("stride", f"must be 1 or 2, got {self.stride}")


class FrozenDict(dict):
    """A dict that refuses changes (`Arch.meta`, nested mappings included); reading, json, pickle and deepcopy work
    as for a dict, so an Arch still travels to a spawned process or inside a deep-copied network."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("arch data is read-only: make a new arch with arch.replace(meta={**arch.meta, ...})")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return FrozenDict, (dict(self),)


def _freeze(v):
    if isinstance(v, dict):
        return FrozenDict({str(k): _freeze(x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return copy.deepcopy(v)


def _thaw(v):
    if isinstance(v, dict):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return copy.deepcopy(v)


@dataclass(frozen=True)
class Arch:
    name: str
    num_joints: int
    input_size: tuple[int, int]
    stem: tuple[Layer, ...]
    blocks: tuple[Layer, ...]
    head: Head
    tail: tuple[Layer, ...] = ()
    act: str = "relu"
    # free-form provenance / search results, kept on round trip (read-only: replace(meta={**a.meta, ...}))
    meta: FrozenDict = field(default_factory=dict, hash=False)
    neck: Neck | None = None  # None: the backbone's last feature goes straight to the head

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ArchError("name", f"expected a non-empty string, got {self.name!r}")
        check_int(self.num_joints, "num_joints")
        size = self.input_size
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise ArchError("input_size", f"expected [H, W], got {size!r}")
        object.__setattr__(self, "input_size", (check_int(size[0], "input_size[0]"),
                                                check_int(size[1], "input_size[1]")))
        if self.act not in ARCH_ACTS:
            raise ArchError("act", f"unknown activation {self.act!r} (relu or relu6)")
        for part in ("stem", "blocks", "tail"):
            layers = getattr(self, part)
            if not isinstance(layers, (list, tuple)):
                raise ArchError(part, f"expected a list, got {type(layers).__name__}")
            for i, layer in enumerate(layers):
                if not isinstance(layer, Layer):
                    raise ArchError(f"{part}[{i}]", f"expected a Layer, got {layer!r}")
                if layer.spec.is_block != (part == "blocks"):
                    raise ArchError(f"{part}[{i}].op", f"{layer.op!r} is not a {_PART_NAME[part]} op "
                                    "(blocks: ir_k<K>_e<E> or skip; stem/tail layers: conv_k<K> or dwconv_k<K>)")
            object.__setattr__(self, part, tuple(layers))
        if not self.stem:
            raise ArchError("stem", "needs at least one layer")
        if not isinstance(self.head, Head):
            raise ArchError("head", f"expected a Head, got {self.head!r}")
        if not isinstance(self.meta, dict):
            raise ArchError("meta", f"expected a mapping, got {type(self.meta).__name__}")
        object.__setattr__(self, "meta", _freeze(self.meta))
        if self.neck is not None and not isinstance(self.neck, Neck):
            raise ArchError("neck", f"expected a Neck, got {self.neck!r}")
        self._check_shapes()

    def _check_shapes(self):
        c = 3
        for part in ("stem", "blocks", "tail"):
            for i, layer in enumerate(getattr(self, part)):
                where = f"{part}[{i}]"
                if layer.spec.kind == "dwconv" and layer.out != c:
                    raise ArchError(where + ".out", f"a depthwise conv keeps its channels: in {c}, out {layer.out}")
                if layer.spec.kind == "skip" and (layer.stride != 1 or layer.out != c):
                    raise ArchError(where + ".op", f"skip needs stride 1 and in == out "
                                    f"(got in {c}, out {layer.out}, stride {layer.stride})")
                c = layer.out
        if self.neck is not None:
            self._check_neck()
        s = self.head_stride
        ups = 2 ** len(self.head.deconv)
        if s != HEATMAP_STRIDE * ups:
            raise ArchError("head.deconv", f"{'neck' if self.neck else 'backbone'} output stride {s} with "
                            f"{len(self.head.deconv)} stride-2 deconvs gives heatmaps at stride {s / ups:g}, "
                            f"not {HEATMAP_STRIDE}")
        h, w = self.input_size
        s = self.backbone_stride
        if h % s or w % s:
            raise ArchError("input_size", f"{h}x{w} is not divisible by the backbone stride {s}")
        self._check_budget()

    def _check_budget(self):
        """Channels, parameters, FLOPs and the largest feature map, estimated from the layer list (upper bounds of
        what the builder makes: full convs, expansion included) and refused past the MAX_* bounds."""
        h, w = self.input_size
        c, params, flops, act = 3, 0, 0, 3 * h * w
        layers = [(f"{p}[{i}]", x) for p in ("stem", "blocks", "tail") for i, x in enumerate(getattr(self, p))]
        for where, layer in layers:
            k, kind, e = layer.spec.kernel or 1, layer.spec.kind, layer.spec.expand or 1
            widest = max(c * e, layer.out)
            if widest > MAX_CHANNELS:
                raise ArchError(where + ".out", f"{widest} channels: more than the {MAX_CHANNELS} a layer may have")
            oh, ow = _down(h, layer.stride), _down(w, layer.stride)
            n = {"conv": k * k * c * layer.out, "dwconv": k * k * c, "skip": 0}.get(
                kind, c * c * e + k * k * c * e + c * e * layer.out)
            params, flops = params + n, flops + 2 * n * oh * ow
            act = max(act, h * w * c * e, oh * ow * layer.out)
            h, w, c = oh, ow, layer.out
        for i, d in enumerate(self.head.deconv):
            if d > MAX_CHANNELS:
                raise ArchError(f"head.deconv[{i}]", f"{d} channels: more than the {MAX_CHANNELS} a layer may have")
            n = self.head.kernel ** 2 * c * d * max(self.head.expand, 1)
            h, w = 2 * h, 2 * w
            params, flops, act, c = params + n, flops + 2 * n * h * w, max(act, h * w * d * self.head.expand), d
        for what, v, limit in (("parameters", params, MAX_PARAMS), ("GFLOPs", flops / 1e9, MAX_GFLOPS),
                                     ("MB for its largest feature map", act * 4 / 2**20, MAX_ACTIVATION_MB)):
            if v > limit:
                raise ArchError("size", f"about {v:,.0f} {what} at {self.input_size[0]}x{self.input_size[1]}: "
                                f"more than the {limit:,.0f} an arch may have (model/arch.py MAX_*)")

    def _check_neck(self):
        made = self.backbone_strides
        for i, s in enumerate(self.neck.levels):
            if s not in made:
                raise ArchError(f"neck.levels[{i}]", f"the backbone produces no stride-{s} feature "
                                f"(it produces strides {', '.join(map(str, made))})")
        if self.neck.levels[-1] != self.backbone_stride:
            raise ArchError("neck.levels", f"the coarsest level is {self.neck.levels[-1]}, but the backbone ends at "
                            f"stride {self.backbone_stride}: the layers after it would feed nothing")

    def replace(self, **changes) -> Arch:
        """A new Arch with `changes` applied, validated like any other (e.g. ``a.replace(input_size=(64, 48))``)."""
        return dataclasses.replace(self, **changes)

    # ---- derived facts -------------------------------------------------------------------------
    def block_act(self, layer: Layer) -> str:
        """The activation a layer or block is built with: its own, else the arch's."""
        return layer.act or self.act

    @property
    def backbone_stride(self) -> int:
        s = 1
        for layer in self.stem + self.blocks + self.tail:
            s *= layer.stride
        return s

    @property
    def backbone_strides(self) -> tuple[int, ...]:
        """The strides of the backbone's feature maps (after each stem/block/tail layer), ascending, distinct."""
        return tuple(sorted({s for s, _ in self._taps()}))

    def _taps(self):
        """Yield (stride, index into stem + blocks + tail) after each layer."""
        s = 1
        for i, layer in enumerate(self.stem + self.blocks + self.tail):
            s *= layer.stride
            yield s, i

    def level_taps(self) -> dict[int, int]:
        """Neck level stride -> index (into stem + blocks + tail) of the last layer at that stride: its output."""
        last = dict(self._taps())  # later layers at one stride overwrite earlier ones
        return {s: last[s] for s in self.neck.levels} if self.neck else {}

    def level_shapes(self) -> dict[int, tuple[int, int, int]]:
        """Neck level stride -> (H, W, C) of the backbone feature it reads."""
        layers = self.stem + self.blocks + self.tail
        h, w = self.input_size
        return {s: (_down(h, s), _down(w, s), layers[i].out) for s, i in self.level_taps().items()}

    @property
    def head_stride(self) -> int:
        """The stride of the features the head reads: the neck's finest level, else the backbone's output."""
        return self.neck.levels[0] if self.neck else self.backbone_stride

    @property
    def head_in_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the features the head reads."""
        if self.neck is None:
            return self.feature_shape("tail")
        h, w = self.input_size
        s = self.head_stride
        return _down(h, s), _down(w, s), self.neck.width

    @property
    def out_channels(self) -> int:
        return (self.stem + self.blocks + self.tail)[-1].out

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The blocks as stages: a stage begins at a stride-2 block or a width change."""
        out: list[Stage] = []
        c = self.stem[-1].out
        for layer in self.blocks:
            if layer.stride != 1 or layer.out != c:
                out.append(Stage(1, layer.out, layer.stride))
            else:
                out[-1] = dataclasses.replace(out[-1], layers=out[-1].layers + 1)
            c = layer.out
        return tuple(out)

    def block_shapes(self):
        """Yield (index, layer, (H, W, C_in)) for each block: the input shape it sees."""
        h, w = self.input_size
        c = 3
        for layer in self.stem:
            h, w, c = _down(h, layer.stride), _down(w, layer.stride), layer.out
        for i, layer in enumerate(self.blocks):
            yield i, layer, (h, w, c)
            h, w, c = _down(h, layer.stride), _down(w, layer.stride), layer.out

    def feature_shape(self, upto: str) -> tuple[int, int, int]:
        """(H, W, C) after 'stem', 'blocks' or 'tail'."""
        parts = {"stem": self.stem, "blocks": self.stem + self.blocks,
                 "tail": self.stem + self.blocks + self.tail}[upto]
        h, w = self.input_size
        c = 3
        for layer in parts:
            h, w, c = _down(h, layer.stride), _down(w, layer.stride), layer.out
        return h, w, c

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "num_joints": self.num_joints,
            "input_size": list(self.input_size),
            "act": self.act,
            "stem": [x.to_dict() for x in self.stem],
            "blocks": [x.to_dict() for x in self.blocks],
            "tail": [x.to_dict() for x in self.tail],
            "head": self.head.to_dict(),
        }
        if self.neck is not None:
            d["neck"] = self.neck.to_dict()
        if self.meta:
            d["meta"] = _thaw(self.meta)
        return d


_PART_NAME = {"stem": "stem layer", "blocks": "block", "tail": "tail layer"}


def _down(n: int, s: int) -> int:
    return (n + s - 1) // s


# ---- reading mappings (arch and search-space files) ----------------------------------------------
def require(d: dict, key: str, src, where: str = ""):
    """d[key], or a UserError naming the file and `where + key` as missing."""
    if not isinstance(d, dict) or key not in d:
        raise field_error(src, f"{where}{key}", "missing")
    return d[key]


def require_list(d: dict, key: str, src) -> list:
    v = require(d, key, src)
    if not isinstance(v, list):
        raise field_error(src, key, f"expected a list, got {type(v).__name__}")
    return v


def check_unknown(d: dict, known, src, where: str = ""):
    unknown = set(d) - set(known)
    if unknown:
        raise field_error(src, f"{where}{sorted(unknown)[0]}", "unknown field")


def parse_layer(d, src, where: str) -> Layer:
    """A layer mapping ({op, out, stride, act}) or compact block string ('ir_k3_e6_c24_s2') -> Layer."""
    if isinstance(d, str):  # compact form "ir_k3_e6_c24_s2" as in timm's decoder
        d = _decode_compact(d, src, where)
    if not isinstance(d, dict):
        raise field_error(src, where, f"expected a mapping with op/out/stride, got {d!r}")
    check_unknown(d, ("op", "out", "stride", "act"), src, where + ".")
    try:
        return Layer(require(d, "op", src, where + "."), require(d, "out", src, where + "."), d.get("stride", 1),
                     d.get("act"))
    except ArchError as e:
        raise e.at(src, where + ".") from None


def _decode_compact(s: str, src, where) -> dict:
    """'ir_k3_e6_c24_s2' -> {op: ir_k3_e6, out: 24, stride: 2}; 'skip_c24' -> skip."""
    m = re.match(r"^(?P<op>ir_k\d+_e\d+|skip)_c(?P<c>\d+)(?:_s(?P<s>\d+))?$", s)
    if not m:
        raise field_error(src, where, f"cannot decode block string {s!r} (expected e.g. ir_k3_e6_c24_s2)")
    return {"op": m["op"], "out": int(m["c"]), "stride": int(m["s"] or 1)}


def parse_head(h, src, where: str = "head") -> Head:
    if not isinstance(h, dict):
        raise field_error(src, where, "expected a mapping")
    check_unknown(h, ("type", "deconv", "kernel", "sic", "expand"), src, f"{where}.")
    try:
        return Head(h.get("type", "mbv1"), h.get("deconv", [64, 32]), h.get("kernel", 4), h.get("sic", True),
                    h.get("expand", 2))
    except ArchError as e:
        raise e.at(src, f"{where}.") from None


def parse_neck(n, src) -> Neck | None:
    if n is None:
        return None
    if not isinstance(n, dict):
        raise field_error(src, "neck", "expected a mapping {type, levels, width, repeats}")
    check_unknown(n, ("type", "levels", "width", "repeats"), src, "neck.")
    try:
        return Neck(require(n, "type", src, "neck."), require(n, "levels", src, "neck."),
                    require(n, "width", src, "neck."), n.get("repeats", 3))
    except ArchError as e:
        raise e.at(src, "neck.") from None


def from_dict(d: dict, src: str | Path | None = None) -> Arch:
    """Validate a parsed arch mapping; every fault raises UserError naming the file and field."""
    if not isinstance(d, dict):
        raise field_error(src, "<top>", "expected a mapping")
    check_unknown(d, ("name", "num_joints", "input_size", "act", "stem", "blocks", "tail", "head", "meta", "neck"),
                  src)
    stem = [parse_layer(x, src, f"stem[{i}]") for i, x in enumerate(require_list(d, "stem", src))]
    blocks = [parse_layer(x, src, f"blocks[{i}]") for i, x in enumerate(require_list(d, "blocks", src))]
    tail = [parse_layer(x, src, f"tail[{i}]") for i, x in enumerate(d.get("tail") or [])]
    head = parse_head(require(d, "head", src), src)
    neck = parse_neck(d.get("neck"), src)
    try:
        return Arch(str(d.get("name", Path(src).stem if src else "arch")), require(d, "num_joints", src),
                    require(d, "input_size", src), stem, blocks, head, tail, d.get("act", "relu"),
                    d.get("meta") or {}, neck)
    except ArchError as e:
        raise e.at(src) from None


# ---- files -------------------------------------------------------------------------------------------
def read_mapping(path: str | Path) -> dict:
    """Load a YAML/JSON file into a dict; a missing or malformed file is one UserError line."""
    p = require_file(path)
    try:
        text = p.read_text()
        d = json.loads(text) if p.suffix == ".json" else yaml_file.loads(text, str(p))  # bounded expansion
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{p}: malformed file: {first_line(e)}") from None
    if not isinstance(d, dict):
        raise UserError(f"{p}: malformed file: expected a mapping at the top level")
    return d


def load(path: str | Path) -> Arch:
    """Read and validate an arch file; bare names resolve to the shipped archs (e.g. 'efficientpose_a')."""
    p = resolve(path)
    if not p.exists() and not p.suffix and len(p.parts) == 1:  # a bare name that is neither a file nor shipped
        raise UserError(f"{path}: no such arch file and no shipped arch of that name (shipped: "
                        f"{', '.join(shipped())})")
    return from_dict(read_mapping(p), src=p)


ARCH_DIR = Path(__file__).parent / "archs"


def resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.exists() or p.suffix:
        return p
    for ext in (".yaml", ".json"):
        cand = ARCH_DIR / f"{p.name.replace('-', '_').lower()}{ext}"
        if cand.exists():
            return cand
    return p


def shipped() -> dict[str, Path]:
    """The arch files that ship with the package, by stem name."""
    return {p.stem: p for p in sorted(ARCH_DIR.glob("*.yaml"))}


def dump(arch: Arch, path: str | Path, header: str | None = None) -> Path:
    """Write an arch file atomically (YAML unless the name ends .json); blocks one per line."""
    p = Path(path)
    d = arch.to_dict()
    if p.suffix == ".json":
        return atomic_write_text(p, json.dumps(d, indent=1) + "\n")
    return atomic_write_text(p, to_yaml(d, header))


def to_yaml(d: dict, header: str | None = None) -> str:
    """YAML with one layer per line (flow style for each layer), readable in a diff."""
    lines = []
    if header:
        lines += [f"# {x}" if x else "#" for x in header.splitlines()]
    for key in ("name", "num_joints", "input_size", "act"):
        lines.append(yaml.safe_dump({key: d[key]}, default_flow_style=True, sort_keys=False).strip().strip("{}"))
    for key in ("stem", "blocks", "tail"):
        if not d[key]:
            lines.append(f"{key}: []")
            continue
        lines.append(f"{key}:")
        for layer in d[key]:
            lines.append("  - " + yaml.safe_dump(layer, default_flow_style=True, sort_keys=False).strip())
    if d.get("neck"):
        lines.append("neck: " + yaml.safe_dump(d["neck"], default_flow_style=True, sort_keys=False).strip())
    lines.append("head: " + yaml.safe_dump(d["head"], default_flow_style=True, sort_keys=False).strip())
    if d.get("meta"):
        lines.append(yaml.safe_dump({"meta": d["meta"]}, sort_keys=False).rstrip())
    return "\n".join(lines) + "\n"
