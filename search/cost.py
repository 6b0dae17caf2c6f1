"""The cost side of the search loss (Eq. 4-7): per-layer candidate costs from a device LUT, or FLOPs.

Costs are taken at the space's nominal input size (its deployment size), whatever input the supernet trains at.
A space that offers the neck has one more table, after the layers': per neck candidate its neck plus the head it
needs (both change with the candidate); the fixed part is then the stem alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.blocks import make_block
from model.latency import LUT, block_key, fixed_keys, head_key, load_lut, neck_key
from model.space import SearchSpace, reference_arch  # noqa: F401 (search's modules take it from here)

FLOPS = "flops"


@dataclass
class CostModel:
    """Costs of a space on one device: `tables[l][i]` for candidate i of decision l (`space.decisions()`: the
    layers, then the neck choice), plus the fixed parts (stem and head; the stem alone with a neck choice)."""

    device: str
    unit: str  # "ms" (LUT) or "MFLOPs"
    tables: list[torch.Tensor]
    fixed: float
    calibration: dict | None = None
    source: dict = field(default_factory=dict)

    def expected(self, probs: list[torch.Tensor], tables: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Eq. 4-5: sum over layers of sum_i p_i * cost_i, plus the fixed parts (differentiable in p). `tables`:
        the same tables moved to the probabilities' device (default: these)."""
        return sum((p * t).sum() for p, t in zip(probs, tables or self.tables)) + self.fixed

    def of(self, space: SearchSpace, choices: list[str]) -> float:
        """Cost of one discrete arch (the LUT sum of its keys)."""
        return self.fixed + sum(float(t[c.index(op)]) for t, c, op in zip(self.tables, space.decisions(), choices))

    def calibrated(self, cost: float) -> float:
        """LUT sum -> predicted whole-network latency, with the LUT's fitted calibration when it has one."""
        c = self.calibration
        return c["scale"] * cost + c["offset_ms"] if c else cost

    def uncalibrated(self, ms: float) -> float:
        c = self.calibration
        return (ms - c["offset_ms"]) / c["scale"] if c else ms


def log_tau(cost: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 7's latency term log_tau(cost): scale-free in the cost's unit, so one lambda fits ms and FLOPs."""
    return torch.log(cost) / math.log(tau)


def device_name(device: str) -> str:
    return Path(device).stem if device.endswith(".json") else device


def load_cost(device: str, space: SearchSpace) -> CostModel:
    """`flops` -> per-candidate FLOPs (computed); anything else -> `model.latency.load_lut(device, space)`. The search
    reads LUT files; measuring a missing one (this machine's host LUT) is a step before it (`make search`, the
    demo: `python -m device_bench lut`)."""
    if device == FLOPS:
        return flops_cost(space)
    lut = load_lut(device, space)
    return lut_cost(lut, space, device_name(device))


def lut_cost(lut: LUT, space: SearchSpace, name: str | None = None) -> CostModel:
    tables = [torch.tensor([lut.ms(block_key(op, (*x.in_hw, x.cin), x.cout, x.stride)) for op in x.candidates],
                           dtype=torch.float32) for x in space.layers()]
    if space.neck is None:
        fixed = sum(lut.ms(k) for k in fixed_keys(space.arch_for(space.first_choices())))
    else:  # per neck candidate: its neck (none: no key) and its head; the stem is the fixed part
        archs = [space.arch_for(space.first_choices(n)) for n in space.neck.candidates]
        tables.append(torch.tensor([sum(lut.ms(k) for k in (neck_key(a), head_key(a)) if k) for a in archs],
                                   dtype=torch.float32))
        fixed = sum(lut.ms(k) for k in fixed_keys(archs[0]) if k not in (neck_key(archs[0]), head_key(archs[0])))
    h = lut.header
    src = {k: h.get(k) for k in ("device", "backend", "runtime", "precision", "threads", "provenance")}
    src["lut"] = str(lut.path) if lut.path else None
    return CostModel(name or lut.device, "ms", tables, fixed, h.get("calibration"), src)


def _flops(make, shape) -> int:
    """FLOPs of `make()` on an input of `shape`, counted on the meta device (shapes only, no arithmetic)."""
    with torch.device("meta"):
        module = make().eval()
        x = torch.zeros(shape)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(x)
    return fc.get_total_flops()


def flops_cost(space: SearchSpace) -> CostModel:
    """DEVICE=flops: FLOPs of each candidate block at the nominal input (torch.utils.flop_counter), in MFLOPs."""
    from model.net import build

    cache: dict[str, float] = {}
    tables = []
    for x in space.layers():
        row = []
        for op in x.candidates:
            key = block_key(op, (*x.in_hw, x.cin), x.cout, x.stride)
            if key not in cache:
                cache[key] = _flops(lambda: make_block(op, x.cin, x.cout, x.stride, space.act),  # noqa: B023
                                    (1, x.cin, *x.in_hw)) / 1e6
            row.append(cache[key])
        tables.append(torch.tensor(row, dtype=torch.float32))
    # Fixed parts: the whole network's FLOPs minus its blocks' (any arch: stem and head do not change).
    blocks = sum(float(t[0]) for t in tables)
    if space.neck is None:
        total = _flops(lambda: build(space.arch_for(space.first_choices())), (1, 3, *space.input_size)) / 1e6
        return CostModel(FLOPS, "MFLOPs", tables, total - blocks, None,
                         {"device": FLOPS, "provenance": "torch.utils.flop_counter"})
    # With a neck choice: the stem is fixed; each neck candidate costs the rest (its neck and head).
    stem = _flops(lambda: build(space.arch_for(space.first_choices())).backbone.stem, (1, 3, *space.input_size)) / 1e6
    totals = [_flops(lambda: build(space.arch_for(space.first_choices(n))), (1, 3, *space.input_size)) / 1e6  # noqa: B023
              for n in space.neck.candidates]
    tables.append(torch.tensor([t - blocks - stem for t in totals], dtype=torch.float32))
    fixed = stem
    return CostModel(FLOPS, "MFLOPs", tables, fixed, None, {"device": FLOPS, "provenance": "torch.utils.flop_counter"})


def in_space(arch, space: SearchSpace) -> list[str] | None:
    """The arch's choices when it is a point of the space (same stem, widths, strides, candidates; with a neck
    choice, a neck the space offers or none), else None. Its head is compared by the caller (reference_cost)."""
    layers = space.layers()
    if [x.to_dict() for x in arch.stem] != [x.to_dict() for x in space.stem] or len(arch.blocks) != len(layers):
        return None
    for b, x in zip(arch.blocks, layers):
        if b.op not in x.candidates or b.out != x.cout or b.stride != x.stride:
            return None
    ops = [b.op for b in arch.blocks]
    if space.neck is None:
        return ops if arch.neck is None else None
    for name in space.neck.candidates:
        if space.neck.neck(name) == arch.neck:
            return ops + [name]
    return None


def reference_cost(cost: CostModel, space: SearchSpace, arch) -> float:
    """The arch's cost on the same tables (uncalibrated LUT sum, or MFLOPs), for an arch inside the space, or for
    any arch whose keys the LUT has."""
    ops = in_space(arch, space)
    if ops is not None and arch.head == space.arch_for(ops).head and \
            tuple(arch.input_size) == tuple(space.input_size):
        return cost.of(space, ops)
    if cost.unit == "ms" and cost.source.get("lut"):
        return load_lut(cost.source["lut"]).latency(arch)
    from model.flops import count_flops

    return count_flops(arch)["flops"] / 1e6
