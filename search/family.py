"""A family from one search: one derived arch per target latency (`--targets 0.5x,1x,20`), all projected from the
same supernet's p, with a plot of LUT latency vs FLOPs vs supernet validation loss beside EfficientPose-A/B/C."""

from __future__ import annotations

from pathlib import Path

from posekit.errors import UserError
from posekit.io import save_figure

REFS = ("efficientpose_a", "efficientpose_b", "efficientpose_c")


def parse_targets(text: str) -> list[str]:
    """'0.5x,1x,20' -> ['0.5x', '1x', '20'] (validated: positive numbers, optionally with an x suffix)."""
    items = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UserError("--targets: expected a comma-separated list such as 0.5x,1x,20")
    for t in items:
        try:
            v = float(t[:-1] if t.endswith("x") else t)
        except ValueError:
            raise UserError(f"--targets: {t!r} is neither a latency (e.g. 20) nor a ratio (e.g. 0.5x)") from None
        if not v > 0:
            raise UserError(f"--targets: {t!r} must be > 0")
    return items


def resolve(item: str, reference: float | None) -> float:
    """A target item in the cost's unit: '0.5x' of the reference's (calibrated) cost, or a number as given."""
    if item.endswith("x"):
        if reference is None:
            raise UserError(f"--targets: {item!r} needs a reference arch (--target-ref)")
        return float(item[:-1]) * reference
    return float(item)


def derive_family(search, items: list[str], out: Path) -> list[tuple[str, float, object, Path]]:
    """One arch per target from the same supernet: (item, target, arch, path)."""
    from . import derive

    ref = None if search.reference is None else search.cost.calibrated(search.reference["cost"])
    res = []
    for item in items:
        t = resolve(item, ref)
        arch = derive.derive(search, name=f"searched-{search.cost.device}-{item}", target=t)
        arch = arch.replace(meta={**arch.meta, "family_target": item})
        path = derive.write(arch, out / f"arch_{item}.yaml", search.cost)
        res.append((item, t, arch, path))
    return res


def plot_family(search, family, path: Path) -> Path:
    """Left: LUT cost vs GFLOPs; right: LUT cost vs supernet validation loss (archs inside the space only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from model.flops import count_flops

    from .cost import in_space, reference_arch, reference_cost

    u = search.cost.unit
    pts = []  # (label, cost, gflops, loss or None, is_reference)
    for item, _, arch, _ in family:
        m = arch.meta
        pts.append((f"target {item}", m.get("lut_latency_ms", m.get(f"lut_cost_{u}")), m["gflops"],
                    m.get("supernet_val_loss"), False))
    for name in REFS:
        try:
            a = reference_arch(name, search.space)
            c = reference_cost(search.cost, search.space, a)
        except Exception:  # a reference the LUT has no keys for is left out of the plot, not an error
            continue
        ops = in_space(a, search.space)
        loss = search.path_loss(ops) if ops is not None else None
        pts.append((a.name, c, count_flops(a)["flops"] / 1e9, loss, True))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, c, g, loss, is_ref in pts:
        style = dict(marker="s", color="tab:gray") if is_ref else dict(marker="o", color="tab:blue")
        ax1.scatter(g, c, **style)
        ax1.annotate(label, (g, c), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if loss is not None:
            ax2.scatter(c, loss, **style)
            ax2.annotate(label, (c, loss), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax1.set_xlabel("GFLOPs (nominal input)")
    ax1.set_ylabel(f"LUT {search.cost.device} ({u})")
    ax1.set_title("cost vs FLOPs", fontsize=9)
    ax2.set_xlabel(f"LUT {search.cost.device} ({u})")
    ax2.set_ylabel("supernet validation loss (alpha half)")
    ax2.set_title("cost vs supernet loss (archs inside the space)", fontsize=9)
    fig.suptitle(f"family from one search on {search.cost.device}: circles derived, squares EfficientPose "
                 f"(space head)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
