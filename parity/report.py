"""report.json + report.html (table, error histograms, keypoint overlays PyTorch vs each runtime)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np

from posekit.io import atomic_write_json, atomic_write_text, save_figure

COLUMNS = [("file", "artifact"), ("engine", "ran on"),
           # is the conversion exact? (the artifact against its twin: runtime.tflite_twin)
           ("fidelity_sqnr_db", "fidelity SQNR dB (vs twin)"), ("fidelity_in_step", "fidelity: int8 within 1 step"),
           ("weights_exact", "weights as the twin's"), ("fidelity_graph_sqnr_db", "graph SQNR dB (float twin)"),
           # what does quantization cost? (keypoints against PyTorch's)
           ("oks_agreement", "OKS-agreement"), ("ap", "AP"), ("dap", "ΔAP"),
           # diagnostics against the PyTorch heatmaps
           ("sqnr_db", "SQNR dB vs PyTorch"), ("max_abs", "max|d|"), ("max_abs_rel", "max|d|/range"),
           ("cosine", "cosine"), ("argmax_same", "argmax same"), ("argmax_within1", "argmax ±1"),
           ("argmax_same_detected", "argmax same, detected"), ("pck", "PCK@0.05"), ("status", "status")]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if np.isinf(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def _finite(o):
    """JSON has no Infinity: an exact match's SQNR is written as the string "inf"."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return "inf" if isinstance(o, float) and np.isinf(o) else o


def histogram(row: dict, out_dir: Path) -> str:
    """Log-binned histogram of |heatmap difference| (counts accumulated over every crop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from parity.metrics import HIST_EDGES

    counts = np.asarray(row["hist"])
    fig, ax = plt.subplots(figsize=(5, 3))
    edges = HIST_EDGES.copy()
    edges[0] = 1e-13  # exact zeros, drawn at the left edge
    ax.stairs(counts, edges, fill=True)
    nz = np.nonzero(counts)[0]
    if len(nz):
        ax.set_xlim(edges[max(nz[0], 0)], edges[min(nz[-1] + 1, len(edges) - 1)])
    ax.set_xscale("log")
    ax.set_xlabel("|heatmap difference| vs PyTorch (leftmost bin: exact)")
    ax.set_ylabel("values")
    ax.set_title(row["file"], fontsize=9)
    fig.tight_layout()
    name = f"hist_{_slug(row['file'])}.png"
    save_figure(fig, out_dir / name)
    return name


def overlays(inputs: np.ndarray, ref: np.ndarray, outputs: dict, out_dir: Path, norm: dict | None,
             skeleton, n: int = 4, stride: int = 4) -> dict:
    """One PNG per runtime: the first n crops with PyTorch's keypoints (green) and the runtime's (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posekit.heatmap import decode
    from runtime.runners import to_pixels

    n = min(n, len(inputs))
    imgs = to_pixels(inputs[:n], norm).transpose(0, 2, 3, 1).astype(np.uint8)
    rk = (decode(ref[:n])[0] + 0.5) * stride - 0.5
    files = {}
    for name, hm in outputs.items():
        ok = (decode(hm[:n])[0] + 0.5) * stride - 0.5
        fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 3))
        for i, ax in enumerate(np.atleast_1d(axes)):
            ax.imshow(imgs[i])
            for kp, c in ((rk[i], "lime"), (ok[i], "red")):
                for a, b in skeleton:
                    ax.plot(kp[[a, b], 0], kp[[a, b], 1], color=c, lw=1, alpha=0.7)
                ax.scatter(kp[:, 0], kp[:, 1], s=8, c=c)
            ax.axis("off")
        fig.suptitle(f"{name}: PyTorch (green) vs runtime (red)", fontsize=9)
        fig.tight_layout()
        files[name] = f"kp_{_slug(name)}.png"
        save_figure(fig, out_dir / files[name])
    return files


def write(result: dict, out_dir: Path, skeleton) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = result["_ref"]
    ran = [r for r in result["rows"] if r.get("engine")]
    kp = overlays(ref["sample_inputs"], ref["sample_heatmaps"], {r["file"]: r["_samples"] for r in ran}, out_dir,
                  result.get("normalization"), skeleton, stride=result.get("heatmap_stride", 4))
    for row in result["rows"]:
        row["figures"] = {"histogram": histogram(row, out_dir) if row.get("engine") else None,
                          "overlay": kp.get(row["file"])}
    public = _finite({k: v for k, v in result.items() if not k.startswith("_")})
    public["rows"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in public["rows"]]
    jpath = atomic_write_json(out_dir / "report.json", public)
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = []
    for r in result["rows"]:
        color = "#c8f7c5" if r["status"] == "pass" else "#f7c5c5"
        cells = "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k, _ in COLUMNS)
        body.append(f"<tr style='background:{color}'>{cells}</tr>")
        if r.get("not_applicable"):
            body.append(f"<tr><td colspan={len(COLUMNS)}>{html.escape('; '.join(r['not_applicable']))}</td></tr>")
        if r["fails"]:
            why = "; ".join(r["fails"])
            fid = r.get("fidelity_divergence") or {}
            if "op_name" in fid:
                why += (f" — first op the twin disagrees with: {fid['op_name']} {fid['tensor']!r} (PyTorch "
                        f"{fid['torch_module']}), worst-op SQNR {fid['sqnr_db']:.1f} dB, in one step "
                        f"{fid.get('in_step')}")
            elif "tensor" in fid:
                why += f" — compressed weight {fid['tensor']!r} (PyTorch {fid['torch_module']}) differs from the twin's"
            loc = r.get("first_divergence") or {}
            if "op" in loc:
                why += (f" — first diverging op: {loc['op']} {loc['tensor']!r} (PyTorch {loc['torch_module']}), "
                        f"relative error {loc['rel_error']:.3g} after {loc['before']:.3g}")
            elif loc:
                why += f" — {loc.get('note', '')}"
            body.append(f"<tr><td colspan={len(COLUMNS)}>{html.escape(why)}</td></tr>")
    figs = "".join(f"<h3>{html.escape(r['file'])}</h3><img src='{r['figures']['histogram']}'>"
                   f"<img src='{r['figures']['overlay']}'>" for r in result["rows"] if r["figures"]["histogram"])
    warn = "".join(f"<p style='color:#b00'><b>warning:</b> {html.escape(w)}</p>" for w in result["warnings"])
    page = (f"<!doctype html><meta charset='utf-8'><title>parity {html.escape(str(result['model']))}</title>"
            f"<style>td,th{{padding:2px 6px;font:12px sans-serif}}table{{border-collapse:collapse}}</style>"
            f"<h1>Parity: {html.escape(str(result['model']))}</h1>{warn}"
            f"<p>Reference: {html.escape(result['reference']['engine'])}, checkpoint "
            f"{html.escape(result['checkpoint'])}, AP {result['reference']['ap']:.4f} on "
            f"{result['num_persons_val']} {html.escape(result['reference'].get('ap_split', 'val2017'))} "
            f"persons; {result['num_crops']} crops from {html.escape(result['data'])}."
            f"</p><table border=1><tr>{head}</tr>{''.join(body)}</table>{figs}")
    if result.get("arm_rows") is not None:  # python -m parity --arm
        from parity.arm_parity import html_table

        page += html_table(result["arm_rows"])
    hpath = atomic_write_text(out_dir / "report.html", page)
    return jpath, hpath
