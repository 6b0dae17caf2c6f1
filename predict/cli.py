"""python -m predict (posenas predict): run one artifact on images, configured by the file's own metadata only.

  posenas predict --model artifacts/demo/tflite/model_int8.tflite data/coco-mini/val2017/000000397133.jpg

Writes <out>/keypoints.json (COCO keypoint results: image_id, category_id, keypoints [x, y, confidence] x J,
score) and <out>/<image>_pose.png (boxes, skeleton, keypoints). Persons: --boxes (COCO detection results json, e.g.
data/coco-mini/annotations/person_detection_results_val2017.json) or the whole image as one person."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from posekit.cli import ArgumentParser, fraction, main_guard, positive_int
from posekit.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m predict", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (jpg, png, ...)")
    p.add_argument("--model", required=True, type=Path,
                   help="an artifact (.tflite, .onnx, .mlpackage, .mlmodel) or a model folder with manifest.json "
                        "(runs its tflite int8, else tflite fp32, onnx, Core ML)")
    p.add_argument("--boxes", type=Path, help="person boxes: COCO detection results json (image ids = the COCO "
                                              "file names' numbers); default: the whole image is one person")
    p.add_argument("--min-score", type=fraction, default=0.5, help="detection score threshold for --boxes "
                                                                "(default 0.5)")
    p.add_argument("--out", type=Path, default=Path("runs/predict"), help="output folder (default runs/predict)")
    p.add_argument("--no-overlay", action="store_true", help="write keypoints.json only")
    p.add_argument("--threads", type=positive_int, default=1, help="runtime threads (default 1)")
    return p


def parse(argv):
    a = build_parser().parse_args(argv)
    for img in a.images:
        if not img.is_file():
            raise UserError(f"{img}: no such image file")
    if a.boxes is not None and not a.boxes.is_file():
        raise UserError(f"--boxes {a.boxes}: no such file")
    return a


def quiet():
    """The runtimes' own logs (absl, coremltools on Linux) are not for the user."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")
    for name in ("coremltools", "absl", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)


@main_guard
def main(argv=None):
    a = parse(sys.argv[1:] if argv is None else argv)
    quiet()
    from .pose_from_artifact import predict

    r = predict(a.model, a.images, a.boxes, a.min_score, a.out, not a.no_overlay, a.threads)
    f = r["predictor"].facts
    print(f"{r['model']}: {f.get('name')} {f.get('version') or ''} ({r['predictor'].runner.engine}); "
          f"{len(r['results'])} person(s) -> {r['json']}" + (f", {len(r['overlays'])} overlay(s)" if r["overlays"]
                                                              else ""))
    return 0
