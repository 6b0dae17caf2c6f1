"""The per-op profile on a small real net (an inverted-residual block at 32x24, fp32, fp16 weights, and int8
calibrated on real crops): the ops' sum comes within 10% of the whole model's time on both kernel sets (an fp16
file's weight DEQUANTIZEs go with the ops that read them on XNNPACK, which folds them), and the one-op
depthwise-conv reproduction is a valid model (both kernel sets agree). Ratios only: they hold on any machine."""

import numpy as np
import pytest

from device_bench import host
from device_bench.lut import select_parts
from runtime import dwconv_repro, tflite_profile

# CONV_2D, PAD, DEPTHWISE_CONV_2D 5x5 s2, CONV_2D: real work per op, and a working set (0.6 MB at fp32) inside a
# core's L2, so that the other test worker's load does not tilt the sum (at 128x96, 4.7 MB, the ops summed to 1.13x
# of the whole on XNNPACK fp32 beside a training test, 1.02-1.06x alone)
KEY = "ir_k5_e6|in=32x24x32|out=64|s=2"


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    part = select_parts("default", with_shipped=False)[1][KEY]
    cache = tmp_path_factory.mktemp("cache")
    return {p: host.convert_part(part, p, cache=cache) for p in ("fp32", "fp16", "int8")}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_sum_of_ops_is_within_10_percent_of_the_whole_model(block, precision, one_thread):
    path = block[precision]
    ops = list(tflite_profile.op_models(path))
    names = [t for _, t, *_ in ops]
    assert "DEPTHWISE_CONV_2D" in names and "CONV_2D" in names
    best = {}
    for _ in range(4):  # a shared machine: the best of up to four profiles per kernel set
        for k, p in tflite_profile.profile_tflite(path).items():
            assert 0 < len(p.ops) <= len(ops) and all(o.ms >= 0 for o in p.ops)
            if k not in best or abs(p.ratio - 1) < abs(best[k].ratio - 1):
                best[k] = p
        if all(abs(p.ratio - 1) <= 0.10 for p in best.values()):
            break
    for p in best.values():
        assert 0.9 <= p.ratio <= 1.1, tflite_profile.format_profile(p)
    table = tflite_profile.format_profile(best["xnnpack"], top=3)
    assert "sum/model" in table and "CONV_2D" in table


def test_single_op_model_computes_what_the_op_computes_in_the_whole_model(block):
    """Cutting keeps the op's constants and quantization: op i alone, fed its whole-model inputs, gives the
    whole model's value of its output, bit for bit on the builtin kernels."""
    from runtime import tflite, tflite_flatbuffer

    path = block["int8"]
    m = tflite_flatbuffer.load_model(path)
    g = m.subgraphs[0]
    full = tflite_profile._all_outputs_model(m)
    whole = tflite_profile._interp(full, "builtin", 1)
    tflite_profile._feed(whole, tflite_profile._input_values(whole, np.random.default_rng(1)))
    whole.invoke()
    for i, op in enumerate(g.operators):
        content, inputs = tflite_profile.single_op_model(m, i)
        it = tflite.interpreter(content, kernels="builtin")
        tflite_profile._feed(it, [whole.get_tensor(t) for t in inputs])
        it.invoke()
        got = it.get_tensor(it.get_output_details()[0]["index"])
        assert np.array_equal(got, whole.get_tensor(op.outputs[0])), i


def test_profile_cli_prints_both_kernel_sets_and_refuses_a_non_tflite(block, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert tflite_profile.main([str(block["fp32"]), "--top", "2", "--rounds", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[xnnpack]" in text and "[builtin]" in text and out.is_file()
    bad = tmp_path / "x.txt"
    bad.write_text("no")
    assert tflite_profile.main([str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_dwconv_repro_is_a_valid_model_both_kernel_sets_agree(tmp_path, dtype):
    from posekit.export_tflite import write_tflite

    path = write_tflite(dwconv_repro.dwconv_model(7, (8, 6, 32), dtype), tmp_path / "dw.tflite")
    ys = []
    for kernels in ("xnnpack", "builtin"):
        ys.append(dwconv_repro.output(dwconv_repro.loaded(path, kernels, dtype)).astype(np.float32))
    assert ys[0].std() > 0
    assert np.abs(ys[0] - ys[1]).max() <= (1 if dtype == "int8" else 1e-4)


def test_a_phone_op_profile_fills_the_same_table():
    from pathlib import Path

    from device_bench import android
    from device_bench.model_bench import phone_profile

    r = android.parse_benchmark_output((Path(__file__).parent / "data" / "device_bench" /
                                        "benchmark_model_op_profiling.txt").read_text())
    p = phone_profile(r, "SERIAL0", "xnnpack")
    top = max(r["ops"], key=lambda o: o["avg_ms"])
    table = tflite_profile.format_profile(p, top=3)
    assert len(p.ops) == len(r["ops"]) and top["type"] in table.splitlines()[1] and "sum/model" in table


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_routed_large_dwconv_runs_on_builtin_bit_exactly(dtype):
    """runtime/tflite_kernels.py: a 7x7 depthwise conv routed (in memory, at load) to the builtin kernels gives
    exactly the builtin kernels' output; a 5x5 one is left to XNNPACK (routing changes nothing)."""
    from runtime.tflite import interpreter
    from runtime.tflite_flatbuffer import op_counts
    from runtime.tflite_kernels import ROUTED, distinct_sets, routed_model

    for k, routed in ((7, 1), (5, 0)):
        model = dwconv_repro.dwconv_model(k, (8, 6, 32), dtype)
        content, n = routed_model(model)
        assert n == routed and op_counts(content).get("RESHAPE", 0) == routed
        assert (content == model) == (not routed) and (ROUTED in distinct_sets(model)) == bool(routed)
        ys = []
        for kernels in (ROUTED, "builtin"):
            it = interpreter(model, 1, kernels=kernels)
            d = it.get_input_details()[0]
            rng = np.random.default_rng(0)
            x = rng.normal(0, 1, d["shape"]) if dtype == "fp32" else rng.integers(-128, 128, d["shape"])
            it.set_tensor(d["index"], x.astype(d["dtype"]))
            it.invoke()
            ys.append(it.get_tensor(it.get_output_details()[0]["index"]))
        if routed:
            assert np.array_equal(ys[0], ys[1])


def test_profile_bar_chart_for_the_report(block, tmp_path):
    from demo.charts import op_profile_chart

    profiles = [{"file": str(block[q]), **p.to_json()} for q in ("fp32", "int8")
                for p in tflite_profile.profile_tflite(block[q], rounds=3).values()]
    png = op_profile_chart(profiles, tmp_path / "op_profile.png")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
