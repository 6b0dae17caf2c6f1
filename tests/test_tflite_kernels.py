"""Kernel sets (runtime/tflite_kernels.py) and the fastest-kernels choice (runtime/tflite_kernel_choice.py, issue 27):
one registry, unknown names refused in one line, routing in memory, the choice recorded by the host LUT and by
convert (manifest entry and the file's metadata). Relations only, never absolute times."""

import json

import numpy as np
import pytest

from model.latency import LUT, check_lut_kernels, lut_kernels
from model.space import load_space
from posekit.errors import UserError
from runtime import dwconv_repro
from runtime.tflite_kernel_choice import TIE_MARGIN, fastest_kernels, pick_fastest
from runtime.tflite_kernels import KERNEL_SETS, ROUTED, XNNPACK, kernel_choice, kernel_set, routed_model


@pytest.mark.slow(10)  # the device_bench CLI's imports
def test_the_registry_names_three_sets_and_refuses_others_in_one_line(tmp_path, capsys):
    import argparse

    from device_bench.cli import main
    from posekit.export_tflite import write_tflite
    from runtime.tflite import KERNELS, interpreter

    assert tuple(KERNEL_SETS) == KERNELS == ("xnnpack", "builtin", "xnnpack+builtin-dwconv")
    assert kernel_choice("auto") == "auto" and kernel_set(ROUTED) == ROUTED
    for bad in ("xnnpak", "auto"):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown kernel set"):
            kernel_set(bad)
    with pytest.raises(ValueError, match="xnnpak"):
        interpreter(dwconv_repro.dwconv_model(3, (4, 4, 8), "fp32"), kernels="xnnpak")
    model = write_tflite(dwconv_repro.dwconv_model(3, (4, 4, 8), "fp32"), tmp_path / "m.tflite")
    for argv in (["bench", "--model", str(model), "--kernels", "xnnpak"],
                 ["lut", "--device", "host", "--quick", "--kernels", "builtin-dwconv"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "unknown kernel set" in err[0]


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_a_routed_set_runs_the_file_unchanged_on_disk(tmp_path, dtype):
    """The routed set is chosen at load: the file on disk keeps its ops; loading it routed runs the big depthwise
    conv on the builtin kernels (bit-equal to builtin) and leaves a small one on XNNPACK (bit-equal to xnnpack)."""
    from posekit.export_tflite import write_tflite
    from runtime.tflite_flatbuffer import op_counts

    for k, twin in ((7, "builtin"), (3, "xnnpack")):
        path = write_tflite(dwconv_repro.dwconv_model(k, (8, 6, 16), dtype), tmp_path / f"k{k}.tflite")
        before = path.read_bytes()
        outs = {}
        for kernels in (ROUTED, twin):
            outs[kernels] = dwconv_repro.output(dwconv_repro.loaded(path, kernels, dtype, seed=1))
        assert np.array_equal(outs[ROUTED], outs[twin])
        assert path.read_bytes() == before and "RESHAPE" not in op_counts(path)
        assert routed_model(path)[1] == (k == 7)


def test_fastest_kernels_names_every_set_and_picks_the_fastest_within_the_margin():
    for k in (3, 7):
        name, ms = fastest_kernels(dwconv_repro.dwconv_model(k, (8, 6, 32), "int8"), budget_s=0.3)
        assert set(ms) == set(KERNEL_SETS) and name in KERNEL_SETS and all(v > 0 for v in ms.values())
        assert ms[name] * (1 - TIE_MARGIN) <= min(ms.values()) <= ms[name]
        if k == 3:  # nothing to route: the routed set is XNNPACK, given its time, never named over it
            assert ms[ROUTED] == ms[XNNPACK] and name != ROUTED
    assert pick_fastest({"xnnpack": 1.0, "builtin": 0.99, ROUTED: 0.5}) == ROUTED
    assert pick_fastest({"xnnpack": 1.0, "builtin": 0.99, ROUTED: 1.0}) == "xnnpack"  # within the margin


def test_a_consumer_timing_other_kernels_than_the_lut_is_refused(tmp_path):
    from device_bench import lutfile

    space = load_space("default")
    h = lutfile.make_header("host-int8", space, backend="host-litert", runtime="ai_edge_litert Interpreter",
                            runtime_version="test", threads=1, precision="int8", kernels=ROUTED,
                            provenance="measured")
    lut = LUT(h, {}, tmp_path / "host-int8.json")
    assert lut_kernels(lut) == ROUTED
    check_lut_kernels(lut, ROUTED)
    with pytest.raises(UserError, match=r"timed with kernels 'xnnpack\+builtin-dwconv'.*'xnnpack'.*--kernels"):
        check_lut_kernels(lut, "xnnpack")


@pytest.mark.slow(70)  # two small conversions (fp32, int8) and their kernel timings
def test_convert_records_the_kernels_in_the_manifest_and_the_metadata(tmp_path, capsys):
    from convert.cli import main
    from model.arch import dump
    from posekit import manifest
    from runtime import metadata
    from tests.parity_helpers import tiny_arch

    arch = dump(tiny_arch(), tmp_path / "tiny.yaml")
    out = tmp_path / "art"
    assert main(["--arch", str(arch), "--input", "64x48", "--targets", "tflite-fp32", "tflite-int8", "--calib", "2",
                 "--int8-candidates", "static_wi8_ai8", "--kernel-timing", "0.3", "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert not manifest.mismatched(out)  # the record went into the file before its sha256 was taken
    for e in m["artifacts"]:
        rec = e["kernels"]
        assert rec["recommended"] in KERNEL_SETS and set(rec["ms"]) == set(KERNEL_SETS)
        assert rec["ms"][rec["recommended"]] * (1 - TIE_MARGIN) <= min(rec["ms"].values())
        assert metadata.read(out / e["file"])["kernels"] == rec
    # --kernel-timing 0: no record (and the option is typed: a negative time is refused at parse)
    out0 = tmp_path / "art0"
    assert main(["--arch", str(arch), "--input", "64x48", "--targets", "tflite-fp32", "--kernel-timing", "0",
                 "--out", str(out0)]) == 0
    (e0,) = json.loads((out0 / "manifest.json").read_text())["artifacts"]
    assert "kernels" not in e0 and "kernels" not in metadata.read(out0 / e0["file"])
    capsys.readouterr()
    assert main(["--arch", str(arch), "--kernel-timing", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--kernel-timing" in capsys.readouterr().err
