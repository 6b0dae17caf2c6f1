"""Parity on the phone's ARM CPU kernels (`python -m parity --arm`): every .tflite of the manifest run by aarch64
LiteRT under qemu-user (runtime/arm64.py) on each ARM profile, on the first parity crops.

Each (file, profile) row answers two questions:
- Does the phone's CPU compute what the host computed? The raw outputs against the host LiteRT's on the same inputs
  (the same integers, prepared by the file's runner): int8 must be the same integers (else: how many elements differ
  and by how many steps, and the worst one named); float within ARM_TOL of the output's range. Dynamic-range int8
  (RUNTIME_QUANTIZED) differs by design: its host comparison is reported and it is judged by the rules below.
- Against PyTorch, the precision's own heatmap rules (thresholds.yaml: max_abs_rel, sqnr_db, argmax/pck) on these
  crops. Rules on the full val run (oks_agreement, dap) and conversion fidelity are the host row's: they carry over
  when the arm64 output is the host's (first question), and the row says so.

Emulated run times are what the check costs, never a latency.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from parity import metrics
from posekit.errors import UserError
from runtime import arm64
from runtime.runners import TFLiteRunner

ARM_TOL = 1e-5  # float outputs: max |arm64 - host| / host range (measured <= 5e-7 on the demo files)
# A static int8 file with float I/O ends in DEQUANTIZE of int8 values: its float output is equal iff the integers are
EXACT = ("int8",)
# Dynamic-range int8 quantizes activations at run time with the running CPU's own kernels, so arm64 and x86 differ by
# design (measured up to 2% of the output range on the demo file): its host comparison is reported, not a verdict,
# and the file is judged by its precision's rules against PyTorch on these crops.
RUNTIME_QUANTIZED = ("int8-dynamic",)
ARM_CROPS = 4  # the parity crops kept for overlays (reference SAMPLES): each invoke costs 0.5-8 s under emulation
HEATMAP_RULES = ("max_abs_rel", "sqnr_db", "cosine", "argmax_same", "argmax_within1", "argmax_same_detected", "pck",
                 "kp_dist_px")


def arm_profiles(s: str) -> list[str]:
    """`all` or a comma list of runtime.arm64 profiles (--arm)."""
    names = list(arm64.PROFILES) if s == "all" else [p.strip() for p in s.split(",") if p.strip()]
    bad = [p for p in names if p not in arm64.PROFILES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown ARM profile {bad[0] if bad else s!r} (known: all, "
                                         f"{', '.join(arm64.PROFILES)})")
    return names


arm_profiles.bad = ["armv7", "all,x", ","]


def arm_rows(result: dict, model_dir: Path, man: dict, thresholds: dict, profiles: list[str], crops: int = ARM_CROPS,
             threads: int = 1, root=None) -> list[dict]:
    """One row per (.tflite of the parity run, profile). Raises UserError only when the runtime is not installed."""
    arm64.setup(root)  # one line naming `make setup-arm`, before any work
    ref = result["_ref"]
    xs, ref_hm = ref["sample_inputs"][:crops], np.asarray(ref["sample_heatmaps"][:crops])
    stride = int(result.get("heatmap_stride", 4))
    host_rows = {r["file"]: r for r in result["rows"]}
    jobs, rows_failed = [], []  # (entry, runner, inputs, host outputs)
    for a in man["artifacts"]:
        if a["format"] != "tflite" or a["file"] not in host_rows:
            continue
        try:
            runner = TFLiteRunner(a, model_dir, man, threads)
        except UserError as e:  # the host row already fails for it; say so here too, the others go on
            rows_failed.append({"file": a["file"], "precision": a["precision"], "profile": "-", "status": "fail",
                                "fails": [f"could not run: {e}"], "emulated_s": 0.0, "not_applicable": []})
            continue
        step = max(1, runner.batch)
        inputs = [runner.prepare(xs[i:i + step]) for i in range(0, len(xs), step)]  # the host's very inputs
        jobs.append((a, runner, inputs, arm64.host_outputs(runner.path, inputs, threads=threads)))
    per_profile = arm64.run_models([(j[1].path, j[2]) for j in jobs], profiles, threads=threads, root=root) \
        if jobs else []
    rows = rows_failed
    for (a, runner, _, host), runs in zip(jobs, zip(*per_profile)):
        host_row = host_rows[a["file"]]
        precision = a["precision"]
        rules = {k: v for k, v in (thresholds.get(precision) or {}).items() if k in HEATMAP_RULES}
        for run in runs:
            row = {"file": a["file"], "precision": precision, "profile": run.profile, "cpu": run.cpu,
                   "qemu": run.seen.get("qemu"), "litert": run.seen.get("litert"),
                   "features": " ".join(run.seen.get("features", [])), "kernels": run.seen.get("kernels"),
                   "litert_log": run.seen.get("litert_log", []), "crops": len(xs),
                   "emulated_s": round(run.emulated_s, 1), "not_applicable": []}
            if not run.ok:
                rows.append({**row, "status": "fail", "fails": [run.error]})
                continue
            agree = arm64.compare(host, run.outputs, 0.0 if precision in EXACT else ARM_TOL)
            row.update(host_match=agree.text, differing=agree.differing, elements=agree.elements,
                       max_steps=agree.max_steps, max_rel_to_host=agree.max_rel)
            fails = [] if agree.ok or precision in RUNTIME_QUANTIZED else \
                [f"arm64 {run.profile} differs from the host: {agree.text}"]
            (oname,) = {k for out in run.outputs for k in out}
            y = np.concatenate([runner.finish(out[oname]) for out in run.outputs])[:len(xs)]
            acc = metrics.Agreement(stride)
            acc.update(ref_hm, y)
            row.update({k: v for k, v in acc.result().items() if k in HEATMAP_RULES})
            rule_fails, row["not_applicable"] = metrics.check(
                row, rules, None if result["reference"]["ap"] >= 0.3 else
                f"reference AP {result['reference']['ap']:.3f} < 0.3 (untrained network)")
            fails += [f"vs PyTorch on {len(xs)} crops: {f}" for f in rule_fails]
            carried = "carried over from the host row" if agree.ok else \
                "NOT carried over (arm64 differs from host" + \
                (": activations quantized at run time by other kernels)" if precision in RUNTIME_QUANTIZED else ")")
            row["host_verdict"] = f"{host_row['status']} ({carried}: full-val keypoint rules and conversion fidelity)"
            if agree.ok and host_row["status"] != "pass":
                fails.append(f"the host row fails and arm64 computes the same: {'; '.join(host_row['fails'])}")
            rows.append({**row, "status": "fail" if fails else "pass", "fails": fails})
    return rows


COLUMNS = [("file", "artifact"), ("profile", "ARM profile"), ("cpu", "qemu -cpu"), ("qemu", "QEMU"),
           ("litert", "LiteRT"), ("kernels", "kernels"), ("host_match", "vs host (same inputs)"),
           ("max_abs_rel", "max|d|/rng vs PyTorch"), ("sqnr_db", "SQNR dB"), ("argmax_same", "argmax"),
           ("emulated_s", "emulated s (not latency)"), ("status", "status"), ("features", "CPU features seen")]


def html_table(rows: list[dict]) -> str:
    """The report's ARM section (parity/report.py appends it)."""
    import html

    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else "" if v is None else str(v)

    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = []
    for r in rows:
        color = "#c8f7c5" if r["status"] == "pass" else "#f7c5c5"
        body.append(f"<tr style='background:{color}'>" +
                    "".join(f"<td>{html.escape(cell(r.get(k)))}</td>" for k, _ in COLUMNS) + "</tr>")
        if r["fails"]:
            body.append(f"<tr><td colspan={len(COLUMNS)}>{html.escape('; '.join(r['fails']))}</td></tr>")
    return (f"<h2>ARM CPU kernels (aarch64 LiteRT under qemu-user)</h2><p>Each .tflite on each ARM profile against "
            f"the host LiteRT on the same inputs and against PyTorch on {rows[0]['crops'] if rows else 0} crops. "
            f"Emulated times are what the check costs, not latency.</p>"
            f"<table border=1><tr>{head}</tr>{''.join(body)}</table>")


def print_rows(rows: list[dict]) -> None:
    print(f"{'artifact (ARM)':34s} {'profile':16s} {'QEMU':8s} {'vs host (same inputs)':40s} {'max|d|/rng':>10s} "
          f"{'emul. s':>7s}  status")
    for r in rows:
        mr = r.get("max_abs_rel")
        print(f"{r['file']:34s} {r['profile']:16s} {str(r.get('qemu')):8s} {(r.get('host_match') or '-')[:40]:40s} "
              f"{'-' if mr is None else f'{mr:10.2e}':>10s} {r['emulated_s']:7.1f}  {r['status'].upper()}")
