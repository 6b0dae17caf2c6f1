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
