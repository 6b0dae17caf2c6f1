"""The history of p: one small panel per layer (candidates over epochs) and the final layers x candidates map."""

from __future__ import annotations

import math
from pathlib import Path

from posekit.io import atomic_path


def plot_history(history: list[dict], layers: list[list[str]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = sorted({c for row in layers for c in row}, key=lambda c: (c == "skip", c))
    colors = {c: plt.cm.tab10(i) for i, c in enumerate(cands)}
    epochs = [h["epoch"] for h in history]
    n = len(layers)
    cols = 7
    rows = math.ceil(n / cols) + 1
    fig = plt.figure(figsize=(2.2 * cols, 1.7 * rows), constrained_layout=True)
    gs = fig.add_gridspec(rows, cols)
    for li, row in enumerate(layers):
        ax = fig.add_subplot(gs[li // cols, li % cols])
        for ci, c in enumerate(row):
            ax.plot(epochs, [h["probs"][li][ci] for h in history], color=colors[c], lw=1.2, label=c)
        ax.set_title(f"layer {li}", fontsize=8)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    # Last row: p at the final epoch, layers x candidates.
    ax = fig.add_subplot(gs[rows - 1, :])
    final = [[history[-1]["probs"][li][row.index(c)] if c in row else float("nan") for li, row in enumerate(layers)]
             for c in cands]
    im = ax.imshow(final, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(cands)), cands, fontsize=7)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=6)
    ax.set_xlabel("layer (p at the last epoch)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.02)
    handles = [plt.Line2D([], [], color=colors[c], label=c) for c in cands]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(cands), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1.04)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(path)
