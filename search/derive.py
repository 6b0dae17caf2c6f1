"""Derive: the argmax candidate of every layer (and of the neck choice, where the space offers one) -> an arch file
with the search's results in its `meta` (and its `neck:` field set by the neck choice: absent for `none`)."""

from __future__ import annotations

from pathlib import Path

import torch

from model.arch import Arch, dump
from model.flops import count_flops
from model.latency import load_lut, network_keys

from .cost import FLOPS, CostModel


def closest_to_target(logp: list[torch.Tensor], tables: list[torch.Tensor], fixed: float, target: float,
                      tol: float = 0.02, bins: int = 2000):
    """The most probable arch (max sum of log p) among those whose cost is within `tol` of `target`, else the
    arch with the cost closest to it. A multiple-choice knapsack, solved exactly by dynamic programming over the
    cost discretised in `bins` steps up to the target (rounding error < 26 half-steps). Returns (indices, cost).
    """
    import numpy as np

    goal = target - fixed
    if goal <= 0:  # unreachable: the cheapest arch
        idx = [int(t.argmin()) for t in tables]
        return idx, fixed + sum(float(t[i]) for t, i in zip(tables, idx))
    step = goal / bins
    n = 2 * bins + 1  # costs above twice the target never win
    best = np.full(n, -np.inf)
    best[0] = 0.0
    back = []
    for lp, t in zip(logp, tables):
        q = np.round(t.double().numpy() / step).astype(int)
        new, arg = np.full(n, -np.inf), np.full(n, -1)
        for i, (qi, li) in enumerate(zip(q, lp.tolist())):
            if qi >= n:
                continue
            cand = np.full(n, -np.inf)
            cand[qi:] = best[: n - qi] + li
            better = cand > new
            new[better], arg[better] = cand[better], i
        back.append(arg)
        best = new
    reach = np.flatnonzero(np.isfinite(best))
    if not len(reach):
        idx = [int(t.argmin()) for t in tables]
        return idx, fixed + sum(float(t[i]) for t, i in zip(tables, idx))
    err = np.abs(reach * step - goal)
    near = reach[err <= tol * target]
    b = int(near[np.argmax(best[near])]) if len(near) else int(reach[np.argmin(err)])
    idx = []
    for arg, t in zip(reversed(back), reversed(tables)):
        i = int(arg[b])
        idx.append(i)
        b -= int(round(float(t[i]) / step))
    idx.reverse()
    return idx, fixed + sum(float(t[i]) for t, i in zip(tables, idx))


def project(search, target: float) -> tuple[list[str], dict]:
    """Latency-aware projection: the most probable arch (max sum of log p at the final temperature) whose LUT
    latency is within 2% of `target` (in the cost's unit, calibrated where the LUT has a calibration)."""
    cost, space = search.cost, search.space
    with torch.no_grad():
        logp = [torch.log(p.clamp_min(1e-30)) for p in search.net.probs()]
    goal = cost.uncalibrated(target)
    idx, _ = closest_to_target(logp, cost.tables, cost.fixed, goal)
    choices = [c[i] for c, i in zip(space.decisions(), idx)]
    argmax = search.net.choices()
    return choices, {"target": round(target, 4), "target_lut": round(goal, 4),
                     "argmax_lut": round(cost.of(space, argmax), 4),
                     "layers_changed_from_argmax": sum(a != b for a, b in zip(argmax, choices)),
                     "rule": "most probable arch (max sum of log p) with the LUT cost within 2% of the target"}


def derive(search, name: str | None = None, target: float | None = None, with_loss: bool = True) -> Arch:
    """The derived arch of a finished `loop.Search`, with expected / LUT latency, FLOPs and convergence in `meta`.

    Without a target: argmax per layer. With one (the search's, or `target`): `project`, the most probable arch
    within 2% of the target; the plain argmax is kept in meta for comparison.
    """
    from .loop import convergence

    cfg, cost, space = search.cfg, search.cost, search.space
    target = search.target if target is None else target
    choices = search.net.choices()
    target_meta = {}
    if target is not None:
        choices, target_meta = project(search, target)
        target_meta["argmax_blocks"] = search.net.choices()
    u = cost.unit
    derived_cost = cost.of(space, choices)
    fl = count_flops(space.arch_for(choices))  # at the space's nominal input, like the LUT
    with torch.no_grad():
        probs = search.net.probs()
        probs1 = search.net.probs(1.0)
    meta = {
        "search": {
            "device": cost.device, "cost_unit": u, "lut": cost.source.get("lut"),
            "lut_provenance": cost.source.get("provenance"), "space": space.name, "space_sha256": space.sha256,
            "epochs": search.epoch, "warmup_epochs": cfg.warmup_epochs, "search_input_size": list(cfg.input_size),
            "paths": cfg.paths, "lambda_start": cfg.lam, "lambda_end": round(search.lam, 8), "tau": cfg.tau,
            "temperature": cfg.temperature, "temperature_end": round(search.net.temperature, 5), "seed": cfg.seed,
            "target": None if search.target is None else round(search.target, 4), "target_ms": cfg.target_ms,
            "reference": search.reference, "calibration": cost.calibration,
        },
        # Fraction of layers whose top candidate has p >= 0.5, at the final temperature (the distribution the
        # search ended on) and at T = 1 (softmax(alpha) itself).
        "convergence": round(convergence(probs), 4),
        "convergence_t1": round(convergence(probs1), 4),
        f"expected_cost_{u}": round(search.expected_value(), 4),
        f"lut_cost_{u}": round(derived_cost, 4),
        "flops": fl["flops"], "gflops": round(fl["flops"] / 1e9, 4), "params": fl["params"],
    }
    if with_loss:
        meta["supernet_val_loss"] = round(search.path_loss(choices), 8)
    if u == "ms":  # the names the other stages read
        meta["expected_latency_ms"] = meta.pop("expected_cost_ms")
        meta["lut_latency_ms"] = meta.pop("lut_cost_ms")
        if cost.calibration:
            meta["calibrated_latency_ms"] = round(cost.calibrated(derived_cost), 4)
    if target_meta:
        meta["target"] = target_meta
    meta["probs"] = {f"{i}:{op}": round(float(p[c.index(op)]), 4)
                     for i, (c, op, p) in enumerate(zip(space.decisions(), choices, probs))}
    if space.neck is not None:  # the neck decision by name, every candidate's p (the LUT decides whether it pays)
        meta["probs"][f"neck:{choices[-1]}"] = meta["probs"].pop(f"{len(space.layers())}:{choices[-1]}")
        meta["neck_choice"] = {name: round(float(probs[-1][i]), 4) for i, name in enumerate(space.neck.candidates)}
    return space.arch_for(choices, name=name or f"searched-{cost.device}", meta=meta)


def write(arch: Arch, path: str | Path, cost: CostModel) -> Path:
    head = (f"Searched by `python -m search --device {cost.device}` (EfficientPose-style differentiable NAS).\n"
            f"Cost: {cost.device} ({cost.unit}); {cost.source.get('provenance') or ''}\n"
            "Train: make train ARCH=<this file>   Convert: make convert ARCH=<this file>")
    return dump(arch, path, header=head)


def reference_costs(cost: CostModel, space, archs=("efficientpose_a",)) -> dict[str, float]:
    """The same LUT's latency of shipped archs with the space's head, where the LUT has their keys (context only)."""
    if cost.device == FLOPS or not cost.source.get("lut"):
        return {}
    from .cost import reference_arch

    lut = load_lut(cost.source["lut"])
    out = {}
    for name in archs:
        a = reference_arch(name, space)
        if not lut.missing(network_keys(a)):
            out[f"{name} ({a.head.type} head)"] = lut.latency(a)
    return out


def summary(arch: Arch, cost: CostModel) -> str:
    m, u = arch.meta, cost.unit
    lat = m.get("lut_latency_ms", m.get(f"lut_cost_{u}"))
    lines = [f"derived arch {arch.name}: " + " ".join(b.op for b in arch.blocks)]
    if "neck_choice" in m:
        n = arch.neck
        lines.append("neck: " + (f"{n.type} width {n.width}, {n.repeats} layers over strides {list(n.levels)}"
                                 if n else "none") + " (p " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                           m["neck_choice"].items()) + ")")
    line = f"LUT latency on {cost.device}: {lat:.2f} ms" if u == "ms" else f"cost ({cost.device}): {lat:.2f} {u}"
    if "calibrated_latency_ms" in m:
        line += f" (calibrated {m['calibrated_latency_ms']:.2f} ms)"
    t = m.get("target")
    if t:
        line += (f" (target {t['target']:.2f} {u}: {100 * (lat - t['target_lut']) / t['target_lut']:+.1f}%; "
                 f"{t['layers_changed_from_argmax']} layer(s) moved off the argmax by the projection)")
    lines.append(line + f"; FLOPs {m['gflops']:.3f} G at {arch.input_size[0]}x{arch.input_size[1]}; "
                 f"params {m['params'] / 1e6:.2f} M")
    lines.append(f"convergence: {m['convergence']:.2f} of layers have a top candidate with p >= 0.5 "
                 f"(T = {m['search']['temperature_end']}; {m['convergence_t1']:.2f} at T = 1)")
    return "\n".join(lines)
