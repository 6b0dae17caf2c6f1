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

Block ops: ``ir_k{K}_e{E}`` is an inverted residual (1x1 expand to E x in, KxK depthwise, 1x1 linear
project; residual when stride 1 and in == out; no expand conv when E == 1). ``skip`` is the identity
and needs stride 1 and in == out. Layer ops (stem/tail): ``conv_k{K}`` (full conv), ``dwconv_k{K}``
(depthwise, out == in), each followed by BN and ``act`` (default: the arch's act; ``none`` for linear).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from posekit.errors import UserError, field_error

IR_RE = re.compile(r"^ir_k(?P<k>[1-9])_e(?P<e>[1-9][0-9]*)$")
LAYER_RE = re.compile(r"^(?P<kind>conv|dwconv)_k(?P<k>[1-9])$")
ACTS = ("relu", "relu6", "none")
HEAD_TYPES = ("plain", "mbv1", "mbv2")
HEATMAP_STRIDE = 4


@dataclass(frozen=True)
class BlockOp:
    """A decoded block string: kind 'ir' or 'skip', kernel and expansion for 'ir'."""

    kind: str
    kernel: int = 0
    expand: int = 0

    @property
    def name(self) -> str:
        return "skip" if self.kind == "skip" else f"ir_k{self.kernel}_e{self.expand}"


def parse_block_op(s: str) -> BlockOp:
    """Decode 'ir_k5_e6' / 'skip' into a BlockOp; ValueError with the reason otherwise."""
    if s == "skip":
        return BlockOp("skip")
    m = IR_RE.match(str(s))
    if not m:
        raise ValueError(f"unknown op {s!r} (expected ir_k<kernel>_e<expansion> or skip)")
    k, e = int(m["k"]), int(m["e"])
    if k % 2 == 0:
        raise ValueError(f"op {s!r}: kernel must be odd")
    return BlockOp("ir", k, e)


@dataclass
class Layer:
    op: str
    out: int
    stride: int = 1
    act: str | None = None  # None: the arch's default act

    def to_dict(self) -> dict:
        d = {"op": self.op, "out": self.out, "stride": self.stride}
        if self.act is not None:
            d["act"] = self.act
        return d


@dataclass
class Head:
    type: str = "mbv1"
    deconv: list[int] = field(default_factory=lambda: [64, 32])
    kernel: int = 4
    sic: bool = True
    expand: int = 2  # mbv2 head only: expansion of the 1x1 before the depthwise transposed conv

    def to_dict(self) -> dict:
        d = {"type": self.type, "deconv": list(self.deconv), "kernel": self.kernel, "sic": self.sic}
        if self.type == "mbv2":
            d["expand"] = self.expand
        return d


@dataclass
class Arch:
    name: str
    num_joints: int
    input_size: tuple[int, int]
    stem: list[Layer]
    blocks: list[Layer]
    head: Head
    tail: list[Layer] = field(default_factory=list)
    act: str = "relu"
    meta: dict = field(default_factory=dict)  # free-form provenance / search results, kept on round trip

    # ---- derived facts -------------------------------------------------------------------------
    @property
    def backbone_stride(self) -> int:
        s = 1
        for layer in self.stem + self.blocks + self.tail:
            s *= layer.stride
        return s

    @property
    def out_channels(self) -> int:
        return (self.stem + self.blocks + self.tail)[-1].out

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
        if self.meta:
            d["meta"] = copy.deepcopy(self.meta)
        return d

    def copy(self) -> Arch:
        return from_dict(self.to_dict())


def _down(n: int, s: int) -> int:
    return (n + s - 1) // s


# ---- parsing and validation -----------------------------------------------------------------------
def _req(d: dict, key: str, src, where: str):
    if not isinstance(d, dict) or key not in d:
        raise field_error(src, f"{where}{key}", "missing")
    return d[key]


def _int(v, src, where, lo=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise field_error(src, where, f"expected an integer >= {lo}, got {v!r}")
    return v


def _layer(d, src, where, block: bool) -> Layer:
    if isinstance(d, str):  # compact form "ir_k3_e6_c24_s2" as in timm's decoder
        d = _decode_compact(d, src, where)
    if not isinstance(d, dict):
        raise field_error(src, where, f"expected a mapping with op/out/stride, got {d!r}")
    unknown = set(d) - {"op", "out", "stride", "act"}
    if unknown:
        raise field_error(src, f"{where}.{sorted(unknown)[0]}", "unknown field")
    op = _req(d, "op", src, where + ".")
    out = _int(_req(d, "out", src, where + "."), src, where + ".out")
    stride = _int(d.get("stride", 1), src, where + ".stride")
    if stride not in (1, 2):
        raise field_error(src, where + ".stride", f"stride must be 1 or 2, got {stride}")
    act = d.get("act")
    if act is not None and act not in ACTS:
        raise field_error(src, where + ".act", f"unknown activation {act!r} (one of {', '.join(ACTS)})")
    if block:
        try:
            parse_block_op(op)
        except ValueError as e:
            raise field_error(src, where + ".op", str(e)) from None
    elif not LAYER_RE.match(str(op)):
        raise field_error(src, where + ".op", f"unknown layer op {op!r} (expected conv_k<K> or dwconv_k<K>)")
    return Layer(str(op), out, stride, act)


def _decode_compact(s: str, src, where) -> dict:
    """'ir_k3_e6_c24_s2' -> {op: ir_k3_e6, out: 24, stride: 2}; 'skip_c24' -> skip."""
    m = re.match(r"^(?P<op>ir_k\d+_e\d+|skip)_c(?P<c>\d+)(?:_s(?P<s>\d+))?$", s)
    if not m:
        raise field_error(src, where, f"cannot decode block string {s!r} (expected e.g. ir_k3_e6_c24_s2)")
    return {"op": m["op"], "out": int(m["c"]), "stride": int(m["s"] or 1)}


def from_dict(d: dict, src: str | Path | None = None) -> Arch:
    """Validate a parsed arch mapping; every fault raises UserError naming the file and field."""
    if not isinstance(d, dict):
        raise field_error(src, "<top>", "expected a mapping")
    known = {"name", "num_joints", "input_size", "act", "stem", "blocks", "tail", "head", "meta"}
    unknown = set(d) - known
    if unknown:
        raise field_error(src, sorted(unknown)[0], "unknown field")
    name = str(d.get("name", Path(src).stem if src else "arch"))
    num_joints = _int(_req(d, "num_joints", src, ""), src, "num_joints")
    size = _req(d, "input_size", src, "")
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise field_error(src, "input_size", f"expected [H, W], got {size!r}")
    size = (_int(size[0], src, "input_size[0]"), _int(size[1], src, "input_size[1]"))
    act = d.get("act", "relu")
    if act not in ("relu", "relu6"):
        raise field_error(src, "act", f"unknown activation {act!r} (relu or relu6)")
    stem = [_layer(x, src, f"stem[{i}]", block=False) for i, x in enumerate(_list(d, "stem", src))]
    blocks = [_layer(x, src, f"blocks[{i}]", block=True) for i, x in enumerate(_list(d, "blocks", src))]
    tail = [_layer(x, src, f"tail[{i}]", block=False) for i, x in enumerate(d.get("tail") or [])]
    if not stem:
        raise field_error(src, "stem", "needs at least one layer")
    head = _head(_req(d, "head", src, ""), src)
    arch = Arch(name, num_joints, size, stem, blocks, head, tail, act, dict(d.get("meta") or {}))
    _check_shapes(arch, src)
    return arch


def _list(d, key, src):
    v = _req(d, key, src, "")
    if not isinstance(v, list):
        raise field_error(src, key, f"expected a list, got {type(v).__name__}")
    return v


def _head(h, src) -> Head:
    if not isinstance(h, dict):
        raise field_error(src, "head", "expected a mapping")
    unknown = set(h) - {"type", "deconv", "kernel", "sic", "expand"}
    if unknown:
        raise field_error(src, f"head.{sorted(unknown)[0]}", "unknown field")
    t = h.get("type", "mbv1")
    if t not in HEAD_TYPES:
        raise field_error(src, "head.type", f"unknown head type {t!r} (one of {', '.join(HEAD_TYPES)})")
    deconv = h.get("deconv", [64, 32])
    if not isinstance(deconv, list) or not deconv:
        raise field_error(src, "head.deconv", "expected a non-empty list of channel widths")
    deconv = [_int(c, src, f"head.deconv[{i}]") for i, c in enumerate(deconv)]
    kernel = _int(h.get("kernel", 4), src, "head.kernel")
    if kernel not in (2, 3, 4):
        raise field_error(src, "head.kernel", f"transposed-conv kernel must be 2, 3 or 4, got {kernel}")
    sic = h.get("sic", True)
    if not isinstance(sic, bool):
        raise field_error(src, "head.sic", f"expected true/false, got {sic!r}")
    expand = _int(h.get("expand", 2), src, "head.expand")
    return Head(t, deconv, kernel, sic, expand)


def _check_shapes(a: Arch, src):
    c = 3
    for part in ("stem", "blocks", "tail"):
        for i, layer in enumerate(getattr(a, part)):
            where = f"{part}[{i}]"
            if layer.op.startswith("dwconv") and layer.out != c:
                raise field_error(src, where + ".out", f"a depthwise conv keeps its channels: in {c}, out {layer.out}")
            if layer.op == "skip" and (layer.stride != 1 or layer.out != c):
                raise field_error(src, where + ".op", f"skip needs stride 1 and in == out "
                                  f"(got in {c}, out {layer.out}, stride {layer.stride})")
            c = layer.out
    s = a.backbone_stride
    ups = 2 ** len(a.head.deconv)
    if s != HEATMAP_STRIDE * ups:
        raise field_error(src, "head.deconv",
                          f"backbone output stride {s} with {len(a.head.deconv)} stride-2 deconvs gives heatmaps at "
                          f"stride {s / ups:g}, not {HEATMAP_STRIDE}")
    h, w = a.input_size
    if h % s or w % s:
        raise field_error(src, "input_size", f"{h}x{w} is not divisible by the backbone stride {s}")


# ---- files -------------------------------------------------------------------------------------------
def read_mapping(path: str | Path) -> dict:
    """Load a YAML/JSON file into a dict; a missing or malformed file is one UserError line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    try:
        text = p.read_text()
        d = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p}: malformed file: {first}") from None
    if not isinstance(d, dict):
        raise UserError(f"{p}: malformed file: expected a mapping at the top level")
    return d


def load(path: str | Path) -> Arch:
    """Read and validate an arch file; bare names resolve to the shipped archs (e.g. 'efficientpose_a')."""
    return from_dict(read_mapping(resolve(path)), src=resolve(path))


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
    from posekit.io import atomic_write_text

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
    lines.append("head: " + yaml.safe_dump(d["head"], default_flow_style=True, sort_keys=False).strip())
    if d.get("meta"):
        lines.append(yaml.safe_dump({"meta": d["meta"]}, sort_keys=False).rstrip())
    return "\n".join(lines) + "\n"
