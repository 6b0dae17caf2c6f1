"""quantize/ as the one place for quantization: the import graph, the one calibration source (real crops; `--data`
reaches convert, device_bench and the closed loop), the int8 selection rule and the CLI."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "posekit", "train", "search", "convert", "quantize", "device_bench", "parity", "demo")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def test_only_quantize_imports_the_quantizers():
    """No module outside quantize/ imports ai_edge_quantizer or coremltools.optimize (source scan, lazy imports
    inside functions included)."""
    offenders, users = [], set()
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            hits = {n for n in _imports(f) if n.split(".")[0] == "ai_edge_quantizer"
                    or n == "coremltools.optimize" or n.startswith("coremltools.optimize.")}
            if hits and pkg != "quantize":
                offenders.append(f"{f.relative_to(ROOT)}: {sorted(hits)}")
            if hits:
                users.add(f.relative_to(ROOT).as_posix())
    assert offenders == []
    assert {"quantize/tflite.py", "quantize/coreml.py"} <= users  # the scan sees the real users


def test_one_calibration_function_real_crops():
    from posekit.data import CocoPose
    from quantize.calibration import calibration_batches, eval_batches, part_batches

    crops = calibration_batches((64, 48), n=4)
    ds = CocoPose(split="train2017", input_size=(64, 48), train=False)
    assert len(crops) == 4 and crops[0].shape == (1, 3, 64, 48)
    assert torch.equal(crops[0][0], torch.as_tensor(ds[0]["image"]).float())  # the dataset's crops, not noise
    assert not torch.equal(eval_batches((64, 48), n=1)[0], crops[0])  # held-out split
    part = part_batches((32, 16, 12), n=2)
    assert part[0].shape == (1, 32, 16, 12) and torch.equal(part[0][:, 3:6], part[0][:, :3])


@pytest.mark.parametrize("argv", [
    ["convert", "--arch", "efficientpose_a", "--input", "64x48", "--targets", "tflite-int8"],
    ["device_bench", "lut", "--device", "host-int8", "--quick", "--no-shipped-archs"],
    ["device_bench", "fidelity", "--device", "host-int8", "--n", "3"],
    ["demo", "closed-loop", "--epochs", "1"],
])
def test_data_reaches_every_int8_calibration(argv, tmp_path, capsys, one_thread):
    """convert, device_bench (host int8 LUT parts, fidelity nets) and the closed loop (through convert) all
    calibrate through quantize.calibration on --data: a --data without crops is the error they report (each CLI
    in-process; the closed loop refuses it when parsed, before any step)."""
    nope = tmp_path / "no-such-data"
    out = ["--out", str(tmp_path / "o")] if argv[0] != "device_bench" else (
        ["--out", str(tmp_path / "lut.json"), "--cache", str(tmp_path / "c")] if argv[1] == "lut" else
        ["--plot", str(tmp_path / "f.png")])
    rc = _cli(argv[0])([*argv[1:], "--data", str(nope), *out])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert "error:" in err and str(nope) in err and "Traceback" not in err


def _cli(package: str):
    """The `python -m <package>` entry point, to call in-process."""
    import importlib

    return importlib.import_module(f"{package}.__main__").main


def _cand(name, oks, sqnr, integer=True, int8=True):
    return {"quantizer": name, "oks_agreement": oks, "sqnr_db": sqnr, "fully_integer": integer,
            "int8_activations": int8}


def test_selection_by_oks_agreement_then_sqnr():
    from quantize.select import OKS_TIE, choose

    a, b = _cand("a", 0.90, 30.0), _cand("b", 0.95, 20.0)
    assert choose([a, b])["quantizer"] == "b"  # keypoints first, not SQNR
    c = _cand("c", 0.95 - OKS_TIE / 2, 25.0)
    assert choose([a, b, c])["quantizer"] == "c"  # tied on OKS: SQNR decides
    assert choose([b, _cand("i16", 0.99, 40.0, int8=False)])["quantizer"] == "b"  # int8 activations preferred
    assert choose([_cand("i16", 0.99, 40.0, int8=False)])["quantizer"] == "i16"
    with pytest.raises(RuntimeError, match="no int8 candidate is fully integer"):
        choose([_cand("f", 0.99, 40.0, integer=False), {"quantizer": "e", "error": "boom"}])


def test_oks_agreement_of_heatmaps():
    from quantize.select import heatmaps_oks_agreement as oks_agreement

    rng = np.random.default_rng(0)
    ref = rng.random((3, 16, 12, 17)).astype(np.float32)
    assert oks_agreement(ref, ref, (64, 48)) == pytest.approx(1.0)
    assert oks_agreement(ref, np.roll(ref, 6, axis=1), (64, 48)) < 0.9


def test_quantize_cli_subcommands(capfd):
    """`--help` lists run and qat; `run` is convert's CLI with --targets quantized (a child process: its error line
    and exit code come through)."""
    from quantize.cli import main

    try:
        rc = main(["--help"])
    except SystemExit as e:  # argparse's --help exit
        rc = e.code
    out = capfd.readouterr().out
    assert rc == 0 and "qat" in out and "run" in out and "--targets quantized" in out
    assert main(["run", "--targets", "nope"]) == 2 and "--targets 'nope': unknown" in capfd.readouterr().err
    assert main(["--targets", "nope"]) == 2 and "--targets 'nope': unknown" in capfd.readouterr().err
