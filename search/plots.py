"""The history of p: one small panel per layer (candidates over epochs) and the final layers x candidates map."""

from __future__ import annotations

import math
from pathlib import Path

from posekit.io import save_figure


def plot_history(history: list[dict], layers: list[list[str]], path: str | Path, title: str = "",
                 names: list[str] | None = None) -> Path:
    """`names`: a panel title per decision (default "layer i"; a space's neck choice is its last decision)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = sorted({c for row in layers for c in row}, key=lambda c: (c == "skip", c))
    colors = {c: plt.cm.tab10(i) for i, c in enumerate(cands)}
    epochs = [h["epoch"] for h in history]
    n, cols = len(layers), 7
    top = min(1.0, max(0.3, 1.1 * max(v for h in history for row in h["probs"] for v in row)))
    rows = math.ceil(n / cols)
    # Fixed spacing (no layout solver: it is most of the time with 30 panels).
    fig, axes = plt.subplots(rows + 1, cols, figsize=(2.0 * cols, 1.5 * (rows + 1)), squeeze=False)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.9, bottom=0.08, hspace=0.6, wspace=0.3)
    for li, row in enumerate(layers):
        ax = axes[li // cols][li % cols]
        for ci, c in enumerate(row):
            ax.plot(epochs, [h["probs"][li][ci] for h in history], color=colors[c], lw=1.2)
        ax.set_title(names[li] if names else f"layer {li}", fontsize=7, pad=2)
        ax.set_ylim(0, top)
        ax.tick_params(labelsize=5)
    for ax in axes.flat[n:]:
        ax.axis("off")
    # Last row: p at the final epoch, candidates x layers.
    ax = fig.add_subplot(rows + 1, 1, rows + 1)
    final = [[history[-1]["probs"][li][row.index(c)] if c in row else float("nan") for li, row in enumerate(layers)]
             for c in cands]
    im = ax.imshow(final, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(cands)), cands, fontsize=6)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=5)
    ax.set_xlabel(f"layer (p after epoch {epochs[-1]})", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    fig.legend(handles=[plt.Line2D([], [], color=colors[c], label=c) for c in cands], loc="upper center",
               ncol=len(cands), fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.99))
    if title:
        fig.text(0.01, 0.99, title, fontsize=8, va="top")
    return save_figure(fig, path)
