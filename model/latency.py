"""Latency lookup tables (LUTs): the keys an arch needs, the file format, and the sum over a network.

Key grammar (one entry per key; the whole network's latency is the sum of its keys):
    block:  ``ir_k5_e6|in=32x24x32|out=64|s=2``        (in = H x W x C of the block's input)
    stem:   ``stem:conv_k3_c32_s2_relu+dwconv_k3_c32_s1_relu+conv_k1_c16_s1_none|in=256x192x3``
    tail:   ``tail:conv_k1_c1280_s1_relu6|in=8x6x320``   (only when the arch has a tail)
    head:   ``head:mbv1_d64-32_k4_sic|in=16x12x96|out=17``   (in: what the head reads, the neck's output if any)
    neck:   ``neck:bifpn_w64_r3_relu|in=64x48x24+32x24x32+16x12x96``   (only when the arch has a neck; one part)

File (``luts/<device>.json``; host devices ``luts/host/<device>-<fingerprint id>.json``, one per machine)::

    {"header": {"device", "backend", "runtime", "runtime_version", "threads", "precision", "kernels", "date",
                "host", "search_space", "search_space_sha256", "provenance", "error", "calibration",
                "fingerprint" (measured LUTs: `posekit.fingerprint`), "search_spaces" (name -> sha256 of every
                space the table was filled for: `--space default,neck`; absent: the one above)},
     "entries": {key: {"median_ms", "min_ms" (measured on a host), "mean_ms", "std_ms", "n", ["how"]}}}

Every entry is finite and within 1 us to 10 s (MIN_OP_MS, MAX_OP_MS), a skip (identity) entry exactly 0; both are
checked at load and before a write.
header["timing"]["statistic"] names the entry field latencies are read from (STATISTICS): "min" for LUTs measured
on a host, "median" (the default) for the others.
``provenance`` is "measured" or "predicted from <source>"; ``error`` holds the prediction's error where
predicted (and a predicted entry's ``how`` says how it was obtained when no published row is like it);
``calibration`` ({"scale", "offset_ms"}), when present, maps the summed LUT latency onto the
measured whole-network latency (fitted by the fidelity command).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from posekit.errors import UserError

from .arch import Arch, Head, Layer

LUT_DIR = Path(__file__).resolve().parent.parent / "luts"
HEADER_FIELDS = ("device", "backend", "runtime", "precision", "search_space", "search_space_sha256", "provenance")
# what a measured LUT must also say about its setup (a synthetic test table has no runtime version or date)
MEASURED_FIELDS = ("runtime_version", "threads", "kernels", "date", "fingerprint")
ENTRY_FIELDS = ("median_ms", "mean_ms", "std_ms", "n")
# header["timing"]["statistic"] -> the entry field a latency is read from. "min" (host LUTs): on a shared machine
# other tenants only ever add time, so the fastest of many interleaved calls is the figure that repeats; the median
# of a part and of a whole network moved by up to 30% within minutes here while their minima held within 2%.
STATISTICS = {"median": "median_ms", "min": "min_ms"}
HOST_DEVICES = ("host", "host-int8")


def _shape(hwc) -> str:
    return "x".join(str(int(v)) for v in hwc)


def block_key(op: str, in_hwc, out: int, stride: int) -> str:
    """A block's key. Its activation is not part of it: every act a block may have (relu, relu6, none) is a clamp
    the runtimes fuse into the conv before it (TFLite's fused_activation_function), so it costs the same. Measured
    here (XNNPACK, 1 thread, interleaved): ir_k3_e6 at 64x48x24 and ir_k5_e6 at 32x24x32, the three acts' minima
    within 1.1% of each other."""
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
    return f"head:{head_sig(arch.head)}|in={_shape(arch.head_in_shape)}|out={arch.num_joints}"


def neck_key(arch: Arch) -> str | None:
    """The whole neck as one part: its levels' input shapes (finest first), width, repeats and activation (a BiFPN
    node's act follows its BN, fused like a block's; the lateral 1x1s have none)."""
    if arch.neck is None:
        return None
    n = arch.neck
    ins = "+".join(_shape(v) for v in arch.level_shapes().values())
    return f"neck:{n.type}_w{n.width}_r{n.repeats}_{arch.act}|in={ins}"


def fixed_keys(arch: Arch) -> list[str]:
    return [k for k in (stem_key(arch), tail_key(arch), neck_key(arch), head_key(arch)) if k]


def block_keys(arch: Arch) -> list[str]:
    return [block_key(layer.op, hwc, layer.out, layer.stride) for _, layer, hwc in arch.block_shapes()]


def network_keys(arch: Arch) -> list[str]:
    """Every key whose latency sums to the arch's latency, in network order."""
    keys = [stem_key(arch)] + block_keys(arch)
    return keys + [k for k in (tail_key(arch), neck_key(arch)) if k] + [head_key(arch)]


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

    @property
    def stat(self) -> str:
        """The entry field latencies are read from (the header's timing statistic; median when it names none)."""
        return stat_field(self.header)

    def ms(self, key: str) -> float:
        e = self.entries.get(key)
        if e is None:
            raise self.missing_error([key])
        return float(e[self.stat])

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
        total = sum(float(self.entries[k][self.stat]) for k in keys)
        cal = self.header.get("calibration")
        if calibrated and cal:
            total = cal["scale"] * total + cal["offset_ms"]
        return total

    def to_dict(self) -> dict:
        return {"header": self.header, "entries": dict(sorted(self.entries.items()))}

    def save(self, path: str | Path | None = None) -> Path:
        """Write atomically after the same checks as load: a bad entry or header is never written."""
        from posekit.io import atomic_write_json

        where = path or self.path
        check_header(where, self.header)
        check_entries(where, self.entries, _real(self.header), self.stat)
        return atomic_write_json(where, self.to_dict())


HOST_BACKEND = "host-litert"  # a LUT of this backend claims to describe the machine that reads it
ALLOW_FOREIGN_ENV = "POSENAS_ALLOW_FOREIGN_LUT"  # =1: take a host LUT measured on another machine (see load_lut)


def _key_op(key: str) -> str:
    return key.split("|", 1)[0]


def is_identity_key(key: str) -> bool:
    """A skip block: it runs no op, so its latency is exactly 0 (every other entry is > 0)."""
    return _key_op(key) == "skip"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _statistic(h: dict) -> str:
    return h["timing"].get("statistic", "median") if isinstance(h.get("timing"), dict) else "median"


def stat_field(h: dict) -> str:
    """The entry field a LUT with header `h` reads latencies from."""
    return STATISTICS.get(_statistic(h), "median_ms")


def check_header(where, h: dict) -> None:
    """Every header field present; a measured LUT carries its device fingerprint, a predicted one its error."""
    stat = _statistic(h)
    if stat not in STATISTICS:
        raise UserError(f"{where}: timing.statistic: {stat!r}, expected one of {', '.join(STATISTICS)}")
    miss = [f for f in HEADER_FIELDS if f not in h]
    prov = str(h.get("provenance", ""))
    if prov == "measured":
        miss += [f for f in MEASURED_FIELDS if f not in h]
    if prov.startswith("predicted") and not isinstance(h.get("error"), dict):
        miss.append("error")
    if miss:
        raise UserError(f"{where}: header is missing {', '.join(miss)}; rebuild it with "
                        f"`make lut DEVICE={h.get('device', Path(str(where)).stem)}`")


# One op of a pose net on any device takes between a microsecond and seconds: a value outside is a unit slip or a
# forged table (1e308 ms is finite, and would only overflow the search's costs).
MIN_OP_MS = 1e-3
MAX_OP_MS = 10_000.0


def check_entries(where, entries: dict, strict_identity: bool = True, stat: str = "median_ms") -> None:
    """Every entry finite and > 0 (identity entries exactly 0): a NaN, infinite, negative or zero latency is refused
    naming the key, at load and before any write. A synthetic table (`strict_identity` False: provenance neither
    measured nor predicted, e.g. a test steering the search) may price skip at any finite cost >= 0. `stat`: the
    field the header's statistic reads, required too."""
    fields = ENTRY_FIELDS + ((stat,) if stat not in ENTRY_FIELDS else ())
    for k, e in entries.items():
        if not isinstance(e, dict):
            raise UserError(f"{where}: entries[{k!r}]: expected a mapping with median_ms")
        for f in fields + tuple(f for f in STATISTICS.values() if f in e and f not in fields):
            if f not in e:
                raise UserError(f"{where}: entries[{k!r}].{f}: missing")
            v = e[f]
            if not _finite(v):
                raise UserError(f"{where}: entries[{k!r}].{f}: {v!r} is not a finite number")
        if e["std_ms"] < 0 or e["n"] < 0:
            raise UserError(f"{where}: entries[{k!r}]: negative std_ms or n")
        for f in ("mean_ms", *(f for f in STATISTICS.values() if f in e)):
            v = e[f]
            if is_identity_key(k) and not strict_identity:
                if v < 0:
                    raise UserError(f"{where}: entries[{k!r}].{f}: {v!r}, a latency must be >= 0")
            elif is_identity_key(k):
                if v != 0:
                    raise UserError(f"{where}: entries[{k!r}].{f}: {v!r}, but an identity (skip) entry must be 0")
            elif v <= 0:
                raise UserError(f"{where}: entries[{k!r}].{f}: {v!r}, a latency must be > 0")
            if not is_identity_key(k) and not MIN_OP_MS <= v <= MAX_OP_MS or v > MAX_OP_MS:
                raise UserError(f"{where}: entries[{k!r}].{f}: {v!r} ms is not a plausible latency for one op "
                                f"({MIN_OP_MS * 1000:g} us to {MAX_OP_MS / 1000:g} s)")


def _real(h: dict) -> bool:
    """Measured or predicted: a table that claims to describe a device (skip entries then exactly 0)."""
    prov = str(h.get("provenance", ""))
    return prov == "measured" or prov.startswith("predicted")


def host_lut_path(device: str, fp: dict | None = None) -> Path:
    """This machine's LUT for a host device: luts/host/<device>-<fingerprint id>.json (generated, not committed:
    a LUT from another CPU misleads, so each machine measures its own on first use)."""
    from posekit.fingerprint import fingerprint_id, host_fingerprint

    return LUT_DIR / "host" / f"{device}-{fingerprint_id(fp or host_fingerprint())}.json"


def resolve_lut(device_or_path: str | Path) -> Path:
    p = Path(device_or_path)
    if p.suffix == ".json" or p.exists():
        return p
    if p.name in HOST_DEVICES:
        return host_lut_path(p.name)
    return LUT_DIR / f"{p.name}.json"


def lut_device(s: str) -> str:
    """A search cost: `flops`, a device whose luts/<device>.json exists, or a LUT file (search, demo, closed-loop).
    The LUT's contents are checked when it is read (load_lut). An argparse type (posekit.cli's typed options)."""
    if s == "flops":
        return s
    p = resolve_lut(s)
    if not p.is_file() and (s.endswith(".json") or "/" in s):  # a path, not a device name
        raise argparse.ArgumentTypeError(f"{s}: no such LUT file" + (" (a folder)" if p.is_dir() else ""))
    if not p.is_file():
        known = sorted(q.stem for q in p.parent.glob("*.json")) if p.parent.is_dir() else []
        raise argparse.ArgumentTypeError(f"no LUT for device '{s}' (no {p}; devices with a LUT: "
                                         f"{', '.join(known + ['flops'])}; or a LUT file; `make lut DEVICE=...` "
                                         "builds one)")
    return s


lut_device.bad = ["tpu", "/nonexistent/lut.json"]


def check_fingerprint(lut: LUT, allow_foreign: bool | None = None) -> None:
    """A LUT that claims to describe this machine (backend host-litert) must carry this machine's fingerprint;
    otherwise one line naming both and the fix, unless allowed (argument, or POSENAS_ALLOW_FOREIGN_LUT=1)."""
    from posekit.fingerprint import describe, differences, host_fingerprint

    if lut.header.get("backend") != HOST_BACKEND:
        return
    if allow_foreign is None:
        allow_foreign = os.environ.get(ALLOW_FOREIGN_ENV, "") not in ("", "0")
    theirs = lut.header.get("fingerprint")
    here = host_fingerprint(runtime=(theirs or {}).get("runtime", "ai-edge-litert"))
    diff = differences(theirs, here, lut.header.get("threads"))
    if diff and not allow_foreign:
        dev = lut.device
        raise UserError(f"{lut.path}: measured on {describe(theirs)}, but this machine is {describe(here)} "
                        f"({'; '.join(diff)}); measure this machine's LUT with `make lut DEVICE={dev}` "
                        f"(python -m device_bench lut --device {dev}), or pass --allow-foreign-lut "
                        f"({ALLOW_FOREIGN_ENV}=1) to use it anyway")


def lut_kernels(lut: LUT) -> str:
    """The kernel set a LUT's entries were timed with (header `kernels`; runtime/tflite_kernels.py names the host's
    sets): a consumer that times whole networks to compare with the LUT must time them with this set."""
    return str(lut.header.get("kernels") or "xnnpack")


def check_lut_kernels(lut: LUT, kernels: str) -> None:
    """One line when a consumer would time with other kernels than the LUT's entries were timed with (its sums then
    describe another runtime setup: on x86 int8 XNNPACK vs its routed set differ 5x, issue 27)."""
    if lut_kernels(lut) != kernels:
        raise UserError(f"{lut.path}: timed with kernels {lut_kernels(lut)!r} (header kernels), but this run times "
                        f"with {kernels!r}; time with the LUT's kernels (--kernels {lut_kernels(lut)}) or measure a "
                        f"LUT with yours (python -m device_bench lut --device {lut.device} --kernels {kernels} "
                        f"--fresh)")


def read_lut(p: Path) -> LUT:
    """Parse and validate one LUT file (header fields, every entry): no device or space checks."""
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{p}: corrupt LUT file ({e}); rebuild it with `make lut DEVICE={p.stem}`") from None
    if not isinstance(d, dict) or not isinstance(d.get("header"), dict) or not isinstance(d.get("entries"), dict):
        raise UserError(f"{p}: not a LUT file (needs 'header' and 'entries' mappings)")
    check_header(p, d["header"])
    check_entries(p, d["entries"], _real(d["header"]), stat_field(d["header"]))
    return LUT(d["header"], d["entries"], p)


def load_lut(device_or_path: str | Path, space=None, allow_foreign: bool | None = None) -> LUT:
    """Load and check a LUT: corrupt file, missing header fields, a NaN / infinite / negative / zero entry, a LUT of
    another device than the one named, a host LUT measured on another machine, or another search space -> one
    UserError naming the file and the key or field.

    A device name reads luts/<device>.json (host devices: this machine's luts/host/<device>-<fingerprint>.json) and
    its header must name that device; a path is taken as given (any device), but a host LUT in it must still match
    this machine unless `allow_foreign`.
    """
    by_name = not (Path(device_or_path).suffix == ".json" or Path(device_or_path).exists())
    p = resolve_lut(device_or_path)
    if not p.is_file():
        dev = Path(device_or_path).name if by_name else p.stem
        if by_name and dev in HOST_DEVICES:
            raise UserError(f"{p}: no {dev} LUT for this machine yet (LUTs are per CPU); measure it with "
                            f"`make lut DEVICE={dev}` (python -m device_bench lut --device {dev})")
        raise UserError(f"{p}: no LUT for device '{dev}'; build it with `make lut DEVICE={dev}`")
    lut = read_lut(p)
    if by_name and lut.device != Path(device_or_path).name:
        raise UserError(f"{p}: header names device {lut.device!r}, not {Path(device_or_path).name!r}; rebuild it "
                        f"with `make lut DEVICE={Path(device_or_path).name}` or pass the file as a path")
    check_fingerprint(lut, allow_foreign)
    h = lut.header
    if space is not None:
        # `search_spaces` (name -> sha256): every space the table was filled for, when more than its first (e.g. the
        # phone profiles serve the default space and the neck space, whose keys add the neck candidates').
        spaces = h.get("search_spaces") or {}
        if not isinstance(spaces, dict):
            raise UserError(f"{p}: search_spaces: expected a mapping of space name -> sha256, got {spaces!r}")
        if h.get("search_space_sha256") not in (None, space.sha256) and space.sha256 not in spaces.values():
            built = ", ".join(f"'{k}' ({v})" for k, v in spaces.items()) or \
                f"'{h.get('search_space')}' ({h.get('search_space_sha256')})"
            raise UserError(f"{p}: built for search space {built}, not '{space.name}' ({space.sha256}); rebuild "
                            f"with `make lut DEVICE={lut.device} SPACE=<that space>`")
        miss = lut.missing(space.lut_keys())
        if miss:
            raise lut.missing_error(miss)
    return lut
