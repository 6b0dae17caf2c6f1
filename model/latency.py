"""Latency lookup tables (LUTs): the keys an arch needs, the file format, and the sum over a network.

Key grammar (one entry per key; the whole network's latency is the sum of its keys):
    block:  ``ir_k5_e6|in=32x24x32|out=64|s=2``        (in = H x W x C of the block's input)
    stem:   ``stem:conv_k3_c32_s2_relu+dwconv_k3_c32_s1_relu+conv_k1_c16_s1_none|in=256x192x3``
    tail:   ``tail:conv_k1_c1280_s1_relu6|in=8x6x320``   (only when the arch has a tail)
    head:   ``head:mbv1_d64-32_k4_sic|in=16x12x96|out=17``

File (``luts/<device>.json``)::

    {"header": {"device", "backend", "runtime", "runtime_version", "threads", "precision", "kernels", "date",
                "host", "search_space", "search_space_sha256", "provenance", "error", "calibration"},
     "entries": {key: {"median_ms", "mean_ms", "std_ms", "n"}}}

``provenance`` is "measured" or "predicted from <source>"; ``error`` holds the prediction's error where
predicted; ``calibration`` ({"scale", "offset_ms"}), when present, maps the summed LUT latency onto the
measured whole-network latency (fitted by the fidelity command).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from posekit.errors import UserError

from .arch import Arch, Head, Layer

LUT_DIR = Path(__file__).resolve().parent.parent / "luts"
HEADER_FIELDS = ("device", "backend", "runtime", "precision", "provenance")


def _shape(hwc) -> str:
    return "x".join(str(int(v)) for v in hwc)


def block_key(op: str, in_hwc, out: int, stride: int) -> str:
    return f"{op}|in={_shape(in_hwc)}|out={out}|s={stride}"


def _layers_sig(layers: list[Layer], default_act: str) -> str:
    return "+".join(f"{x.op}_c{x.out}_s{x.stride}_{x.act or default_act}" for x in layers)


def head_sig(head: Head) -> str:
    s = f"{head.type}_d{'-'.join(map(str, head.deconv))}_k{head.kernel}"
    if head.type == "mbv2":
        s += f"_e{head.expand}"
    return s + ("_sic" if head.sic else "")


def stem_key(arch: Arch) -> str:
    return f"stem:{_layers_sig(arch.stem, arch.act)}|in={arch.input_size[0]}x{arch.input_size[1]}x3"


def tail_key(arch: Arch) -> str | None:
    if not arch.tail:
        return None
    return f"tail:{_layers_sig(arch.tail, arch.act)}|in={_shape(arch.feature_shape('blocks'))}"


def head_key(arch: Arch) -> str:
    return f"head:{head_sig(arch.head)}|in={_shape(arch.feature_shape('tail'))}|out={arch.num_joints}"


def fixed_keys(arch: Arch) -> list[str]:
    return [k for k in (stem_key(arch), tail_key(arch), head_key(arch)) if k]


def block_keys(arch: Arch) -> list[str]:
    return [block_key(layer.op, hwc, layer.out, layer.stride) for _, layer, hwc in arch.block_shapes()]


def network_keys(arch: Arch) -> list[str]:
    """Every key whose latency sums to the arch's latency, in network order."""
    keys = [stem_key(arch)] + block_keys(arch)
    t = tail_key(arch)
    return keys + ([t] if t else []) + [head_key(arch)]


def parse_key(key: str) -> dict:
    """'ir_k5_e6|in=32x24x32|out=64|s=2' -> {'op': 'ir_k5_e6', 'in': (32, 24, 32), 'out': 64, 's': 2}."""
    op, *parts = key.split("|")
    d = {"op": op}
    for p in parts:
        k, v = p.split("=", 1)
        d[k] = tuple(int(x) for x in v.split("x")) if k == "in" else int(v)
    return d


@dataclass
class LUT:
    header: dict
    entries: dict[str, dict]
    path: Path | None = None
    _missing_hint: str = field(default="", repr=False)

    @property
    def device(self) -> str:
        return self.header.get("device", "?")

    def ms(self, key: str) -> float:
        e = self.entries.get(key)
        if e is None:
            raise self.missing_error([key])
        return float(e["median_ms"])

    def missing(self, keys) -> list[str]:
        return [k for k in keys if k not in self.entries]

    def missing_error(self, keys) -> UserError:
        where = f"{self.path}" if self.path else f"LUT '{self.device}'"
        shown = ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        return UserError(f"{where}: {len(keys)} key(s) missing: {shown}; measure them with "
                         f"`make lut DEVICE={self.device}` (python -m device_bench lut --device {self.device})")

    def latency(self, arch: Arch, calibrated: bool = False) -> float:
        """Summed latency (ms) of the arch's keys; every missing key is listed in one error."""
        keys = network_keys(arch)
        miss = self.missing(keys)
        if miss:
            raise self.missing_error(miss)
        total = sum(float(self.entries[k]["median_ms"]) for k in keys)
        cal = self.header.get("calibration")
        if calibrated and cal:
            total = cal["scale"] * total + cal["offset_ms"]
        return total

    def to_dict(self) -> dict:
        return {"header": self.header, "entries": dict(sorted(self.entries.items()))}

    def save(self, path: str | Path | None = None) -> Path:
        from posekit.io import atomic_write_json

        return atomic_write_json(path or self.path, self.to_dict())


def resolve_lut(device_or_path: str | Path) -> Path:
    p = Path(device_or_path)
    return p if (p.suffix == ".json" or p.exists()) else LUT_DIR / f"{p.name}.json"


def load_lut(device_or_path: str | Path, space=None) -> LUT:
    """Load and check a LUT: corrupt file, missing header fields, or another search space -> one UserError."""
    p = resolve_lut(device_or_path)
    if not p.is_file():
        dev = p.stem
        raise UserError(f"{p}: no LUT for device '{dev}'; build it with `make lut DEVICE={dev}`")
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: corrupt LUT file ({e}); rebuild it with `make lut DEVICE={p.stem}`") from None
    if not isinstance(d, dict) or not isinstance(d.get("header"), dict) or not isinstance(d.get("entries"), dict):
        raise UserError(f"{p}: not a LUT file (needs 'header' and 'entries' mappings)")
    h = d["header"]
    miss = [f for f in HEADER_FIELDS if f not in h]
    if miss:
        raise UserError(f"{p}: header is missing {', '.join(miss)}")
    for k, e in d["entries"].items():
        if not isinstance(e, dict) or not isinstance(e.get("median_ms"), (int, float)):
            raise UserError(f"{p}: entries[{k!r}]: needs a numeric median_ms")
    lut = LUT(h, d["entries"], p)
    if space is not None:
        if h.get("search_space_sha256") not in (None, space.sha256):
            raise UserError(f"{p}: built for search space '{h.get('search_space')}' "
                            f"({h.get('search_space_sha256')}), not '{space.name}' ({space.sha256}); rebuild with "
                            f"`make lut DEVICE={lut.device}`")
        miss = lut.missing(space.lut_keys())
        if miss:
            raise lut.missing_error(miss)
    return lut
