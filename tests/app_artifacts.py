"""One small model and every artifact `python -m convert` makes of it, made once per test run and shared by
test_convert, test_metadata, test_predict and test_parity_cli (and by the pytest-xdist workers: the first to need it
builds it under a file lock, the others wait and read it). The model is the tiny arch of the parity tests (64x48)
fitted for a few epochs on the bundled train images with `python -m train`, so its heatmaps have real peaks and int8
keypoints are comparable (random weights give flat maps whose argmax is noise). Tests that write into an artifact
folder work on a copy (`copy_of`)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CALIB = 8
EPOCHS = 50


def _run(*args):
    r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _build(d: Path) -> None:
    from model.arch import dump
    from tests.parity_helpers import tiny_arch

    d.mkdir(parents=True)
    arch = dump(tiny_arch(), d / "tiny.yaml")
    _run("train", "--arch", str(arch), "--input", "64x48", "--epochs", str(EPOCHS), "--batch-size", "32", "--lr",
         "1e-2", "--no-augment", "--eval-every", "1000", "--threads", "1", "--no-progress", "--out", str(d / "train"))
    # every target (the default), with the default int8 candidates
    _run("convert", "--ckpt", str(d / "train" / "best.pt"), "--calib", str(CALIB), "--out", str(d / "art"))


def shared(tmp_path_factory) -> tuple[Path, dict]:
    """(artifact folder, its manifest). Read-only: every test of the run sees the same files."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's temp folder, common to the workers
    d = base / "app-artifacts"
    with open(base / "app-artifacts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (d / "done").is_file():
            shutil.rmtree(d, ignore_errors=True)
            _build(d)
            (d / "done").touch()
    out = d / "art"
    return out, json.loads((out / "manifest.json").read_text())


def copy_of(out: Path, dst: Path, keep=None) -> Path:
    """A private copy of the artifact folder (file times kept) for a test that writes into it; keep(entry) -> bool
    selects the artifacts the copy's manifest lists."""
    shutil.copytree(out, dst, ignore=shutil.ignore_patterns("parity", ".lock"))
    if keep is not None:
        man = json.loads((dst / "manifest.json").read_text())
        man["artifacts"] = [a for a in man["artifacts"] if keep(a)]
        (dst / "manifest.json").write_text(json.dumps(man, indent=1))
    return dst
