"""Where things live, in one place: the repository and its data, LUT, run and artifact folders.

Defaults are repository-relative (not cwd-relative), so a stage finds the bundled data and the demo's outputs from
any working directory; an explicit command-line path is taken as given.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
DEFAULT_COCO = DATA / "coco-mini"  # the bundled real COCO subset (data/SOURCES.md)
DEFAULT_MPII = DATA / "mpii-mini"
LUTS = REPO / "luts"
RUNS = REPO / "runs"
ARTIFACTS = REPO / "artifacts"
DEMO_CKPT = RUNS / "demo" / "train" / "best.pt"  # what `make demo` trains; the default checkpoint of convert and QAT
