"""python -m demo: the whole pipeline on the bundled real data, then a summary table and runs/demo/report.html.

Steps (each a stage CLI; skipped when its outputs are newer than its inputs):
  1. lut     host LUT, quick subset          python -m device_bench lut --device host --quick
  2. search  DNAS on the pixel profile      python -m search --device pixel
  3. train   the derived arch, short         python -m train --arch runs/demo/search/arch.yaml
  4. convert TFLite / Core ML / ONNX         python -m convert --ckpt runs/demo/train/best.pt
  5. parity  every artifact vs PyTorch       python -m parity --model-dir artifacts/demo
  6. bench   host latency fp32 / int8        python -m device_bench bench --model-dir artifacts/demo --no-profile

python -m demo closed-loop: measure, search, convert, measure on this host's int8 LUT (see its --help).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from model.latency import lut_device
from model.space import SPACE_DIR
from posekit.cli import ArgumentParser, existing_dir, main_guard, output_dir
from posekit.paths import ARTIFACTS, DEFAULT_COCO, LUTS, RUNS

from .pipeline import Step, run_steps

DEMO_TRAIN = ["--input", "128x96", "--epochs", "60", "--batch-size", "8", "--lr", "2e-3", "--schedule", "step",
              "--steps", "0.8", "--no-augment", "--val-split", "train2017", "--eval-every", "10", "--seed", "0"]
AP_SPLIT = "train2017"


def steps(out: Path, artifacts: Path, data: str | None, device: str) -> tuple[list[Step], dict[str, Path]]:
    py = sys.executable
    space = SPACE_DIR / "default.yaml"
    lut = LUTS / f"{device}.json"
    quick_lut = out / "luts" / "host-quick.json"
    arch = out / "search" / "arch.yaml"
    ckpt = out / "train" / "best.pt"
    manifest = artifacts / "manifest.json"
    parity = artifacts / "parity" / "report.json"
    bench = out / "bench.json"
    data_args = ["--data", data] if data else []
    data_in = [Path(data)] if data else [DEFAULT_COCO]
    table_ = [
        Step("lut", [py, "-m", "device_bench", "lut", "--device", "host", "--quick", "--out", str(quick_lut)],
             [space], [quick_lut]),
        Step("search", [py, "-m", "search", "--device", device, "--out", str(out / "search"), *data_args],
             [space, lut, *data_in], [arch]),
        # 30 bundled images teach no generalisation: the demo trains to fit them (the recipe that reaches OKS AP
        # ~0.8 on them) and scores AP on those same images, which shows every export reproduces what PyTorch learned.
        Step("train", [py, "-m", "train", "--arch", str(arch), "--out", str(out / "train"), *DEMO_TRAIN, *data_args],
             [arch, *data_in], [ckpt]),
        Step("convert", [py, "-m", "convert", "--ckpt", str(ckpt), "--out", str(artifacts), *data_args],
             [ckpt], [manifest]),
        Step("parity", [py, "-m", "parity", "--model-dir", str(artifacts), "--ap-split", AP_SPLIT, *data_args],
             [manifest], [parity], allow_fail=True),
        # --no-profile: the per-op profile times every op of every file on both kernel sets (tens of seconds per
        # file); the demo's bench stays whole-model only (`make bench MODEL_DIR=...` profiles)
        Step("bench", [py, "-m", "device_bench", "bench", "--device", "host", "--model-dir", str(artifacts),
                       "--json", str(bench), "--no-profile"], [manifest], [bench]),
    ]
    paths = {"arch": arch, "manifest": manifest, "parity": parity, "bench": bench,
             "alpha_png": out / "search" / "alpha_history.png", "curves": out / "train" / "curves.png",
             "fusion": out / "train" / "fusion_weights.json"}
    return table_, paths


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m demo", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=existing_dir, help="COCO tree (default: the bundled data/coco-mini)")
    p.add_argument("--device", default="pixel", type=lut_device, help="LUT the search optimizes for (default: pixel)")
    p.add_argument("--out", type=output_dir, default=RUNS / "demo", help="run folder (default runs/demo)")
    p.add_argument("--artifacts", type=output_dir, default=ARTIFACTS / "demo", help="artifacts folder (default "
                   "artifacts/demo)")
    p.add_argument("--force", action="store_true", help="redo every step")
    return p


@main_guard
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["closed-loop"]:  # the other table of stage steps (demo/closed_loop.py)
        from .closed_loop import main as closed_loop_main

        return closed_loop_main(argv[1:])
    args = build_parser().parse_args(argv)
    t0 = time.monotonic()
    table_, paths = steps(args.out, args.artifacts, str(args.data) if args.data else None, args.device)
    run_steps(table_, args.out / "logs", force=args.force)
    from .report import gather, print_table, table, write_html  # matplotlib and torch: not for --help

    s = gather(paths, table_)
    rows = table(s)
    print_table(rows)
    report = write_html(s, rows, paths, args.out)
    print(f"\nreport: {report}\nsummary: {args.out / 'summary.json'}\narch: {paths['arch']}\n"
          f"checkpoint: {args.out / 'train' / 'best.pt'}\nartifacts: {args.artifacts} (manifest.json)\n"
          f"parity: {paths['parity'].with_suffix('.html')}\nlogs: {args.out / 'logs'}\n"
          f"total {time.monotonic() - t0:.0f} s")
    failed = [k for k, v in s["parity_status"].items() if v != "pass"]
    if failed:
        # The demo shows what the pipeline finds; `make parity-test` is the gate that fails on it.
        print(f"\nPARITY FAIL ({len(failed)} of {len(s['parity_status'])} artifacts): {', '.join(failed)}; the "
              f"figures and the first diverging layer are in {paths['parity'].with_suffix('.html')}. "
              f"`make parity-test MODEL_DIR={args.artifacts}` exits non-zero on them.")
    return 0
