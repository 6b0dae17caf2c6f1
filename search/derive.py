"""Derive: the argmax candidate of every layer -> an arch file with the search's results in its `meta`."""

from __future__ import annotations

from pathlib import Path

import torch

from model.arch import Arch, dump
from model.flops import count_flops
from model.latency import load_lut, network_keys

from .cost import FLOPS, CostModel


def derive(search, name: str | None = None) -> Arch:
    """The derived arch of a finished `loop.Search`, with expected / LUT latency and FLOPs in `meta`."""
    cfg, cost, space = search.cfg, search.cost, search.space
    choices = search.net.choices()
    u = cost.unit
    derived_cost = cost.of(space, choices)
    fl = count_flops(space.arch_for(choices))  # at the space's nominal input, like the LUT
    meta = {
        "search": {
            "device": cost.device, "cost_unit": u, "lut": cost.source.get("lut"),
            "lut_provenance": cost.source.get("provenance"), "space": space.name, "space_sha256": space.sha256,
            "epochs": search.epoch, "warmup_epochs": cfg.warmup_epochs, "search_input_size": list(cfg.input_size),
            "lambda_start": cfg.lam, "lambda_end": round(search.lam, 6), "tau": cfg.tau,
            "temperature": cfg.temperature, "seed": cfg.seed, "target_ms": cfg.target_ms,
        },
        f"expected_cost_{u}": round(search.expected_value(), 4),
        f"lut_cost_{u}": round(derived_cost, 4),
        "flops": fl["flops"], "gflops": round(fl["flops"] / 1e9, 4), "params": fl["params"],
    }
    if u == "ms":  # the names the other stages read
        meta["expected_latency_ms"] = meta.pop("expected_cost_ms")
        meta["lut_latency_ms"] = meta.pop("lut_cost_ms")
        if cost.calibration:
            meta["calibrated_latency_ms"] = round(cost.calibrated(derived_cost), 4)
    with torch.no_grad():
        probs = search.net.probs()
    meta["probs"] = {f"{i}:{op}": round(float(p[x.candidates.index(op)]), 4)
                     for i, (x, op, p) in enumerate(zip(space.layers(), choices, probs))}
    return space.arch_for(choices, name=name or f"searched-{cost.device}", meta=meta)


def write(arch: Arch, path: str | Path, cost: CostModel) -> Path:
    head = (f"Searched by `python -m search --device {cost.device}` (EfficientPose-style differentiable NAS).\n"
            f"Cost: {cost.device} ({cost.unit}); {cost.source.get('provenance') or ''}\n"
            "Train: make train ARCH=<this file>   Convert: make convert ARCH=<this file>")
    return dump(arch, path, header=head)


def reference_costs(cost: CostModel, archs=("efficientpose_a",)) -> dict[str, float]:
    """The same LUT's latency of shipped archs with the space's head, where the LUT has their keys (context only)."""
    if cost.device == FLOPS or not cost.source.get("lut"):
        return {}
    from model.arch import load

    lut = load_lut(cost.source["lut"])
    out = {}
    for name in archs:
        a = load(name)
        for head in ("mbv1", a.head.type):
            a.head.type = head
            if not lut.missing(network_keys(a)):
                out[f"{name} ({head} head)"] = lut.latency(a)
                break
    return out


def summary(arch: Arch, cost: CostModel) -> str:
    m, u = arch.meta, cost.unit
    lat = m.get("lut_latency_ms", m.get(f"lut_cost_{u}"))
    lines = [f"derived arch {arch.name}: " + " ".join(b.op for b in arch.blocks)]
    line = f"LUT cost on {cost.device}: {lat:.2f} {u}"
    if "calibrated_latency_ms" in m:
        line += f" (calibrated {m['calibrated_latency_ms']:.2f} ms)"
    lines.append(line + f"; FLOPs {m['gflops']:.3f} G at {arch.input_size[0]}x{arch.input_size[1]}; "
                 f"params {m['params'] / 1e6:.2f} M")
    return "\n".join(lines)
