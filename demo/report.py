"""The demo's summary: a table on the terminal and runs/demo/report.html, every figure read from this run's files."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from model import load
from model.latency import load_lut
from posekit import manifest as manifest_file
from posekit.errors import UserError
from posekit.io import atomic_write_json, atomic_write_text

from .charts import latency_flops_chart, op_profile_chart, reference_points


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _luts(arch) -> tuple[dict, dict, dict]:
    """The LUTs the summary reads ({device: LUT}), the arch's latency on each ({device: ms or None}) and, for each
    None, why ({device: reason}): a fresh clone has no host LUT for its machine until `make lut` measures one."""
    luts, lat, why = {}, {}, {}
    for d in ("pixel", "host", "host-int8"):
        lat[d] = None
        try:
            luts[d] = load_lut(d)
            lat[d] = round(luts[d].latency(arch), 3)  # names every key the LUT lacks
        except UserError as e:
            why[d] = str(e)
    return luts, lat, why


def gather(paths: dict[str, Path], steps) -> dict:
    from model.flops import count_flops  # torch: not needed for `python -m demo --help`

    arch = load(paths["arch"])
    f = count_flops(arch)
    luts, lat, lat_why = _luts(arch)
    manifest = manifest_file.read(paths["manifest"].parent) or {}  # the one manifest reader (absent: {})
    parity = _json(paths["parity"])
    bench = _json(paths["bench"])
    rows = parity.get("rows", [])

    def ap_of(fmt: str, precision: str):
        for r in rows:
            if r.get("format") == fmt and r.get("precision") == precision:
                return r.get("ap")
        return None

    def host_ms(precision: str, kernels: str = "xnnpack"):
        for r in bench.get("results", []):
            if r.get("precision") == precision and r.get("kernels") == kernels:
                return r.get("median_ms")
        return None

    sizes = {f"{a['format']} {a['precision']}": a["size_bytes"] for a in manifest.get("artifacts", [])}
    model_input = manifest.get("input_size")
    return {
        "arch": {"name": arch.name, "file": str(paths["arch"]), "blocks": [b.op for b in arch.blocks],
                 "head": arch.head.to_dict(),
                 "meta": {k: v for k, v in arch.to_dict().get("meta", {}).items() if k != "probs"}},
        "params": f["params"], "gflops": f["flops"] / 1e9, "gmacs": f["macs"] / 1e9,
        "input_size": list(arch.input_size), "model_input_size": model_input,
        "lut_latency_ms": lat, "lut_latency_na": lat_why,
        "host_measured_ms": {"fp32": host_ms("fp32"), "int8": host_ms("int8"),
                             "fp32_builtin": host_ms("fp32", "builtin"), "int8_builtin": host_ms("int8", "builtin"),
                             # XNNPACK with its slow >25-tap depthwise convs on builtin kernels (issue 27)
                             "fp32_routed": host_ms("fp32", "xnnpack+builtin-dwconv"),
                             "int8_routed": host_ms("int8", "xnnpack+builtin-dwconv")},
        "ap": {"pytorch": parity.get("reference", {}).get("ap"), "tflite_int8": ap_of("tflite", "int8"),
               "coreml_fp16": ap_of("coreml-mlprogram", "fp16")},
        "ap_split": parity.get("reference", {}).get("ap_split", "val2017"),
        "parity_status": {r["file"]: r["status"] for r in rows},
        "parity_engines": sorted({r.get("engine", "") for r in rows}),
        "sizes_bytes": sizes,
        "steps": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 1),
                   "outputs": [str(p) for p in s.outputs]} for s in steps],
        "luts": {d: {"provenance": lut.header.get("provenance"), "path": str(lut.path)} for d, lut in luts.items()},
        "fusion_weights": _json(paths["fusion"]).get("nodes", []) if arch.neck else None,
        "_luts": luts, "_arch": arch,
    }


def _fmt(v, unit="", nd=3):
    if v is None:
        return "n/a"
    return f"{v:.{nd}f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def _lut_ms(s: dict, device: str) -> str:
    """The arch's LUT latency on `device`, or n/a with the reason (no LUT for this machine, keys missing)."""
    v = s["lut_latency_ms"][device]
    return _fmt(v, " ms") if v is not None else f"n/a ({s['lut_latency_na'][device]})"


def _search_line(m: dict) -> str:
    """Target, how close the derived arch landed, whether p decided, and the step cost (the search's arch meta)."""
    sm, t, st = m.get("search", {}), m.get("target") or {}, m.get("step_times") or {}
    parts = []
    if t:
        lat = m.get("lut_latency_ms", t.get("target_lut"))
        ref = (sm.get("reference") or {}).get("name")
        parts.append(f"target {t['target']:.2f} ms{f' ({ref})' if ref and sm.get('target_ms') is None else ''}, "
                     f"derived {lat:.2f} ms ({100 * (lat - t['target_lut']) / t['target_lut']:+.1f}%)")
    if "convergence" in m:
        parts.append(f"convergence {m['convergence']:.2f} (layers with top p >= 0.5)")
    if st:
        parts.append(f"search step {st['ratio']:.1f}x a training step of {st['reference']}")
    return "; ".join(parts) or "n/a"


def _fusion_line(nodes: list[dict] | None) -> str:
    """What a BiFPN neck's fusions learned (train's fusion_weights.json): each node's inputs and normalized weights,
    the smallest first named (an input driven to ~0 is one the net learned to leave out)."""
    if nodes is None:
        return "no neck in the derived arch"
    if not nodes:
        return "n/a (no fusion_weights.json from training)"
    low = min(((n, i, w) for n in nodes for i, w in zip(n["inputs"], n["weights"])), key=lambda t: t[2])
    each = "; ".join(f"L{n['layer']} {n['node']}: " + ", ".join(f"{i} {w:.2f}" for i, w in zip(n["inputs"],
                                                                                              n["weights"]))
                     for n in nodes)
    return f"smallest {low[2]:.2f} (layer {low[0]['layer']} {low[0]['node']} <- {low[1]}); {each}"


def table(s: dict) -> list[tuple[str, str]]:
    host, ap = s["host_measured_ms"], s["ap"]
    at = f"at {s['input_size'][0]}x{s['input_size'][1]}"
    mi = s.get("model_input_size") or s["input_size"]
    mat = f"at {mi[0]}x{mi[1]}"
    rows = [
        ("derived arch", f"{s['arch']['name']} ({s['arch']['file']})"),
        ("blocks", " ".join(s["arch"]["blocks"])),
        ("head", json.dumps(s["arch"]["head"])),
        ("BiFPN fusion weights learned", _fusion_line(s.get("fusion_weights"))),
        ("search", _search_line(s["arch"]["meta"])),
        ("params", f"{s['params'] / 1e6:.3f} M"),
        ("FLOPs", f"{s['gflops']:.3f} G ({s['gmacs']:.3f} GMACs) at {s['input_size'][0]}x{s['input_size'][1]}"),
        (f"LUT latency {at}, pixel (predicted)", _lut_ms(s, "pixel")),
        (f"LUT latency {at}, host fp32", _lut_ms(s, "host")),
        (f"LUT latency {at}, host int8", _lut_ms(s, "host-int8")),
        (f"host measured {mat} (trained size), fp32 / int8, XNNPACK",
         f"{_fmt(host['fp32'], ' ms')} / {_fmt(host['int8'], ' ms')}"),
        (f"host measured {mat}, fp32 / int8, builtin kernels",
         f"{_fmt(host['fp32_builtin'], ' ms')} / {_fmt(host['int8_builtin'], ' ms')}"),
        (f"host measured {mat}, fp32 / int8, xnnpack+builtin-dwconv (runtime/tflite_kernels.py)",
         f"{_fmt(host.get('fp32_routed'), ' ms')} / {_fmt(host.get('int8_routed'), ' ms')}"),
        (f"AP ({s['ap_split']}) PyTorch / TFLite int8 / Core ML fp16",
         f"{_fmt(ap['pytorch'])} / {_fmt(ap['tflite_int8'])} / {_fmt(ap['coreml_fp16'])}"),
        ("parity", ", ".join(f"{k}: {v}" for k, v in s["parity_status"].items()) or "n/a"),
        ("Core ML ran on", ", ".join(e for e in s["parity_engines"] if "coreml" in e.lower()) or "n/a"),
    ]
    rows += [(f"size {k}", f"{v / 1e6:.2f} MB") for k, v in s["sizes_bytes"].items()]
    return rows


def print_table(rows):
    w = max(len(k) for k, _ in rows)
    print("\n" + "=" * 30 + " demo summary " + "=" * 30)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


def write_html(s: dict, rows, paths: dict[str, Path], out: Path) -> Path:
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    devices = [d for d in ("pixel", "host", "host-int8") if d in s["_luts"]]
    ref = reference_points(s["_arch"], s["_luts"])
    chart = latency_flops_chart(ref, devices, figdir / "latency_flops.png")
    figs = [("Latency vs FLOPs on the same LUTs (reference archs with the derived arch's head)", chart)]
    for title, src in (("Architecture-parameter (alpha) history", paths["alpha_png"]),
                       ("Training curves", paths["curves"])):
        if src.is_file():
            dst = figdir / src.name
            shutil.copyfile(src, dst)
            figs.append((title, dst))
    profiles = _json(paths["bench"]).get("profiles") if paths.get("bench") else None
    if profiles:  # bench's per-op profiles (runtime/tflite_profile.py), by op type
        figs.append(("Per-op profile on this host, by op type (bench)", op_profile_chart(profiles,
                                                                                         figdir / "op_profile.png")))
    ref_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)) if not isinstance(r.get(k), str) else r[k])}</td>"
                         for k in ["name", "head", "params", "gflops"] + [f"lut_{d}_ms" for d in devices]) + "</tr>"
        for r in ref)
    summary = "".join(f"<tr><th align=left>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    steps = "".join(f"<tr><td>{html.escape(x['name'])}</td><td>{html.escape(x['status'])}</td>"
                    f"<td>{x['seconds']}</td><td>{html.escape(', '.join(x['outputs']))}</td></tr>" for x in s["steps"])
    parity_link = paths["parity"].with_suffix(".html")
    rel_parity = Path("..") / ".." / parity_link if parity_link.is_file() else None
    body = (
        "<!doctype html><meta charset='utf-8'><title>posenas demo report</title>"
        "<style>body{font:14px sans-serif;max-width:1100px;margin:auto}td,th{padding:3px 8px}"
        "table{border-collapse:collapse}img{max-width:100%}</style>"
        "<h1>posenas demo report</h1><p>Every figure below comes from this run's files; LUT provenance: "
        + "; ".join(f"<b>{html.escape(d)}</b>: {html.escape(str(v['provenance']))}" for d, v in s["luts"].items())
        + f"</p><h2>Summary</h2><table border=1>{summary}</table>"
        "<h2>Derived arch beside EfficientPose-A/B/C and the MobileNetV2 baseline</h2><table border=1><tr>"
        + "".join(f"<th>{h}</th>" for h in ["arch", "head", "params", "GFLOPs"] + [f"LUT {d} (ms)" for d in devices])
        + f"</tr>{ref_rows}</table>"
        + "".join(f"<h2>{html.escape(t)}</h2><img src='figures/{p.name}'>" for t, p in figs)
        + (f"<h2>Parity</h2><p><a href='{rel_parity}'>full parity report</a></p>" if rel_parity else "")
        + f"<h2>Steps</h2><table border=1><tr><th>step</th><th>status</th><th>s</th><th>outputs</th></tr>{steps}"
        "</table>")
    public = {k: v for k, v in s.items() if not k.startswith("_")}
    public["reference_archs"] = ref
    atomic_write_json(out / "summary.json", public)
    return atomic_write_text(out / "report.html", body)
