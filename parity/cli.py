"""python -m parity: every artifact of a manifest against the PyTorch checkpoint it came from.

Exit 0 when every artifact passes its precision's thresholds, 1 when any fails (each named with the rule it broke),
2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from parity.arm_parity import ARM_CROPS, arm_profiles
from posekit.cli import ArgumentParser, existing_dir, existing_file, int_range, main_guard, output_dir, positive_int
from posekit.errors import UserError
from posekit.keypoints import DEFAULT_COCO
from posekit.safe_paths import confined, output_folder
from runtime.arm64 import PROFILES


def default_model_dir() -> Path:
    found = sorted(Path("artifacts").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError("artifacts/*/manifest.json: none found (run `make convert`, or pass --model-dir)")
    return found[-1].parent  # the most recently converted model


def int8_hint(selection: dict | None, shipped: str | None) -> str:
    """What convert measured for the other int8 candidates (manifest int8_selection): the choice a user can make."""
    others = [c for c in (selection or {}).get("candidates", []) if "sqnr_db" in c and c["quantizer"] != shipped]
    if not others:
        return "  no other int8 candidate was built (python -m convert --int8-candidates ... builds and scores them)"
    return "  other int8 candidates at conversion: " + "; ".join(
        f"{c['quantizer']} {c['sqnr_db']} dB" + ("" if c.get("int8_activations", True) else
                                                  " (int16 activations: not run by XNNPACK)") for c in others) + \
        f" (to ship one: python -m convert --int8-candidates {others[0]['quantizer'].split()[-1]})"


def _num(v, width: int, prec: int) -> str:
    return f"{'-':>{width}s}" if v is None or (isinstance(v, float) and v != v) else f"{v:{width}.{prec}f}"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m parity", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=existing_dir,
                   help="artifacts/<model> with manifest.json (default: the newest one)")
    p.add_argument("--data", type=existing_dir, default=DEFAULT_COCO,
                   help="COCO tree: val2017 crops (AP) + train2017 crops (default: bundled data/coco-mini)")
    p.add_argument("--ap-split", default="val2017",
                   help="split whose persons are scored with OKS AP (default val2017; the demo, which trains on the "
                        "bundled train images, scores train2017 and says so)")
    p.add_argument("--thresholds", type=existing_file, help="per-precision rules (default: parity/thresholds.yaml)")
    p.add_argument("--crops", "--images", dest="crops", type=positive_int,  # --images: the old, misleading name
                   help="at most N person crops per split (default: all val crops, 64 train crops)")
    p.add_argument("--out", type=output_dir, help="report folder (default: <model-dir>/parity)")
    p.add_argument("--ckpt", help="reference checkpoint (default: the manifest's source.checkpoint)")
    p.add_argument("--only", help="only artifacts whose file contains this text")
    p.add_argument("--threads", type=positive_int, default=1, help="runtime threads (default 1)")
    p.add_argument("--no-locate", action="store_true", help="skip the first-diverging-layer search on failures")
    p.add_argument("--coreml-reference", action="store_true",
                   help="on macOS too, run Core ML artifacts with the reference executor instead of MLModel.predict")
    p.add_argument("--arm", nargs="?", const="all", type=arm_profiles, metavar="PROFILES",
                   help="also run every .tflite on the phone's ARM CPU kernels (aarch64 LiteRT under qemu-user, `make "
                        "setup-arm`): all profiles, or a comma list of " + ", ".join(PROFILES))
    p.add_argument("--arm-crops", type=int_range(1, ARM_CROPS), default=ARM_CROPS,
                   help=f"crops per ARM run, at most the {ARM_CROPS} whose PyTorch heatmaps parity keeps (default "
                        f"{ARM_CROPS}; an invoke costs 0.5-8 s under emulation)")
    return p


def parse(argv):
    return build_parser().parse_args(argv)


@main_guard
def main(argv=None) -> int:
    args = parse(argv)
    from parity import metrics, report
    from parity.compare_artifacts import run_parity
    from posekit.keypoints import keypoint_info

    if args.crops is not None and args.crops < 1:
        raise UserError(f"--crops: must be >= 1, got {args.crops}")
    import torch

    torch.set_num_threads(max(1, args.threads))  # small convs on a busy machine: extra threads only add waiting
    model_dir = args.model_dir or default_model_dir()
    # the model folder may have been sent to us: its parity/ must not be a symlink out, and nothing written under
    # the report folder (cache, report, plots) may land outside it
    if args.only:  # a --only that matches nothing: one line before any work, an earlier report left as it is
        from posekit import manifest as manifest_file

        if not any(args.only in a["file"] for a in manifest_file.load(model_dir)["artifacts"]):
            raise UserError(f"{model_dir / 'manifest.json'}: --only {args.only!r} matches no artifact")
    out = args.out or output_folder(model_dir, "parity")
    thresholds = metrics.load_thresholds(args.thresholds)
    with warnings.catch_warnings(record=True) as caught, confined(out):
        warnings.simplefilter("always", UserWarning)
        result = run_parity(model_dir, args.data, thresholds, args.crops, out, args.ckpt, args.threads, args.only,
                            not args.no_locate, args.coreml_reference, args.ap_split)
        if args.arm:
            from parity import arm_parity
            from parity.compare_artifacts import read_manifest

            result["arm_rows"] = arm_parity.arm_rows(result, model_dir, read_manifest(model_dir), thresholds,
                                                     args.arm, args.arm_crops, args.threads)
        jpath, hpath = report.write(result, out, keypoint_info(result["num_joints"])["skeleton"])
    for w in caught:
        if "AP" in str(w.message):
            print(f"warning: {w.message}", file=sys.stderr)
    print(f"reference {result['reference']['engine']}: AP {result['reference']['ap']:.4f} "
          f"({result['num_crops']} crops)")
    print(f"{'artifact':40s} {'ran on':22s} {'max|d|/rng':>10s} {'SQNR dB':>8s} {'argmax':>7s} {'OKS-agr':>7s} "
          f"{'AP':>6s} {'dAP':>7s} {'fid.SQNR':>8s} {'in-step':>7s} {'w.exact':>7s}  status")
    for r in result["rows"]:
        if r["engine"] is None:
            print(f"{r['file']:40s} {'(did not run)':22s} {'':>76s}  FAIL")
            continue
        print(f"{r['file']:40s} {r['engine'][:22]:22s} {r['max_abs_rel']:10.2e} {r['sqnr_db']:8.2f} "
              f"{r['argmax_same']:7.3f} {_num(r.get('oks_agreement'), 7, 3)} {r['ap']:6.3f} {r['dap']:+7.3f} "
              f"{_num(r.get('fidelity_sqnr_db'), 8, 2)} {_num(r.get('fidelity_in_step'), 7, 4)} "
              f"{_num(r.get('weights_exact'), 7, 4)}  {r['status'].upper()}")
    na = sorted({n.split(": not applicable ")[1] for r in result["rows"] for n in r.get("not_applicable", [])
                 if n.split()[0] in metrics.KEYPOINT_METRICS})
    for why in na:
        print(f"keypoint rules not applicable {why}")
    for r in result["rows"]:  # static int8 without an XNNPACK-exact twin: its fidelity is judged op by op
        if any(n.split()[0] in metrics.END_TO_END_FIDELITY for n in r.get("not_applicable", [])):
            worst = _num(r.get("fidelity_op_sqnr_db"), 0, 1)
            print(f"{r['file']}: conversion fidelity judged per op (worst op {worst} dB, in step "
                  f"{_num(r.get('fidelity_op_in_step'), 0, 4)}): no end-to-end twin ({r.get('fidelity_exact_note')})")
    if args.arm:
        from parity.arm_parity import print_rows

        print_rows(result["arm_rows"])
    failed = [r for r in result["rows"] if r["fails"]]
    for r in result.get("arm_rows", []):
        if r["fails"]:
            print(f"FAIL {r['file']} on ARM {r['profile']} (-cpu {r['cpu']}): {'; '.join(r['fails'])}", file=sys.stderr)
    for r in failed:
        print(f"FAIL {r['file']} ({r['format']} {r['precision']}): {'; '.join(r['fails'])}", file=sys.stderr)
        fid = r.get("fidelity_divergence") or {}
        if "op_name" in fid:
            off = f"{fid['fraction_off']:.1%} of its values more than one step off" if fid.get("in_step") is not None \
                else f"SQNR {fid['sqnr_db']:.1f} dB"
            print(f"  first op the twin disagrees with: op {fid['op']} {fid['op_name']} {fid['tensor']!r} ~ PyTorch "
                  f"{fid['torch_module']}: {off}; stored weights as the twin's: {fid.get('stored_weights_equal')}",
                  file=sys.stderr)
        elif "tensor" in fid:
            print(f"  compressed weight {fid['tensor']!r} (PyTorch {fid['torch_module']}): {fid['fraction_off']:.2%} "
                  f"of its values are not the twin's", file=sys.stderr)
        loc = r.get("first_divergence") or {}
        if "op" in loc:
            print(f"  first diverging op: {loc['op']} {loc['tensor']!r} ~ PyTorch {loc['torch_module']}: relative "
                  f"error {loc['rel_error']:.3g} (max before it {loc['before']:.3g})", file=sys.stderr)
        elif loc:
            print(f"  {loc.get('note')}", file=sys.stderr)
        if r["precision"] == "int8" and any(not f.startswith("conversion fidelity") for f in r["fails"]):
            print(int8_hint(result.get("int8_selection"), r.get("quantizer")), file=sys.stderr)
    print(f"report: {jpath} and {hpath}")
    if not result["rows"]:
        raise UserError(f"{model_dir / 'manifest.json'}: no artifact to check" + (f" matching {args.only!r}"
                                                                                  if args.only else ""))
    return 1 if failed or any(r["fails"] for r in result.get("arm_rows", [])) else 0
