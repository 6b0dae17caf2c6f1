"""curves.png: train loss, validation score (OKS AP / AR, or PCKh) and learning rate per epoch."""

from __future__ import annotations

from pathlib import Path

from posekit.io import save_figure


def plot_curves(records: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(ep, [r["train_loss"] for r in records], marker=".")
    axes[0].set(title="train loss (weighted heatmap MSE)", xlabel="epoch", yscale="log")
    for key in ("AP", "AR", "PCKh"):
        ev = [r for r in records if r.get(key) is not None]
        if ev:
            axes[1].plot([r["epoch"] for r in ev], [r[key] for r in ev], marker=".", label=key)
    axes[1].set(title="val score", xlabel="epoch", ylim=(0, 1), xlim=axes[0].get_xlim())
    axes[1].legend()
    axes[2].plot(ep, [r["lr"] for r in records], marker=".")
    axes[2].set(title="learning rate", xlabel="epoch")
    fig.tight_layout()
    return save_figure(fig, path)
