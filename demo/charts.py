"""Plots of the demo report, each from files this run produced (or shipped LUTs it names)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report is files
import matplotlib.pyplot as plt  # noqa: E402

from model import load  # noqa: E402
from model.arch import Arch  # noqa: E402
from model.flops import count_flops  # noqa: E402
from model.latency import LUT, network_keys  # noqa: E402
from posekit.io import save_figure  # noqa: E402

REFERENCE = ("efficientpose_a", "efficientpose_b", "efficientpose_c", "mobilenetv2_simplebaseline",
             "efficientpose_a_bifpn")


def reference_points(derived: Arch, luts: dict[str, LUT]) -> list[dict]:
    """LUT latency and FLOPs of the derived arch and the reference archs, each with the derived arch's head and
    input, so the comparison is of backbones under one head."""
    rows = []
    for name in ("derived",) + REFERENCE:
        a = derived if name == "derived" else load(name)
        if name != "derived" and not name.startswith("mobilenet") and a.neck is None:
            a = a.replace(head=derived.head)  # EfficientPose-A/B/C with the same slim head as the derived arch
        # (a BiFPN neck keeps its own head: it reads stride 4, where the derived head's deconvs start at 16)
        a = a.replace(input_size=derived.input_size)
        f = count_flops(a)
        row = {"name": a.name if name != "derived" else f"derived ({a.name})", "params": f["params"],
               "gflops": f["flops"] / 1e9, "head": a.head.type}
        for dev, lut in luts.items():
            miss = lut.missing(network_keys(a))
            row[f"lut_{dev}_ms"] = None if miss else lut.latency(a)
        rows.append(row)
    return rows


def latency_flops_chart(rows: list[dict], devices: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(devices), figsize=(5.5 * len(devices), 4.2), squeeze=False)
    for ax, dev in zip(axes[0], devices):
        for r in rows:
            ms = r.get(f"lut_{dev}_ms")
            if ms is None:
                continue
            derived = r["name"].startswith("derived")
            ax.scatter(r["gflops"], ms, s=90 if derived else 45, marker="*" if derived else "o",
                       color="crimson" if derived else "steelblue", zorder=3)
            ax.annotate(r["name"].replace("derived ", "").split(" (")[0] if not derived else "derived",
                        (r["gflops"], ms), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("GFLOPs (2 x MACs)")
        ax.set_ylabel(f"LUT latency on {dev} (ms)")
        ax.set_title(f"latency vs FLOPs, {dev} LUT")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def op_profile_chart(profiles: list[dict], path: Path, types: int = 6) -> Path:
    """One stacked bar per (file, kernels) of the bench's per-op profiles (bench json `profiles`): ms per op type,
    the `types` largest types overall named, the rest as 'other'; the whole model's time as a tick."""
    total: dict[str, float] = {}
    for p in profiles:
        for t, ms in p["by_type"].items():
            total[t] = total.get(t, 0.0) + ms
    named = sorted(total, key=lambda t: -total[t])[:types]
    labels = [f"{Path(p['file']).name} [{p['kernels']}]" for p in profiles]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(profiles) + 2.4))
    left = [0.0] * len(profiles)
    for t in named + ["other"]:
        ms = [p["by_type"].get(t, 0.0) if t != "other" else sum(v for k, v in p["by_type"].items() if k not in named)
              for p in profiles]
        ax.barh(labels, ms, left=left, label=t)
        left = [a + b for a, b in zip(left, ms)]
    ax.scatter([p["model_ms"] or 0 for p in profiles], labels, marker="|", s=300, color="black", zorder=3,
               label="whole model")
    ax.set_xlabel("ms (each op timed alone as a single-op model; sum vs the whole model's tick)")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
