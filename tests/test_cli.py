"""Every option of every stage is validated when parsed: a bad value is one `error:` line and exit 2, no traceback.

The walk is in-process (each stage's build_parser(), parse_args, SystemExit caught, stderr captured): fast.
"""

import argparse
import importlib
from pathlib import Path

import pytest

from posekit import cli

# (stage module, subcommand or None): every parser a user can reach
PARSERS = {
    "train": lambda: importlib.import_module("train.cli").build_parser(),
    "model": lambda: importlib.import_module("model.cli").build_parser(),
    "device_bench": lambda: importlib.import_module("device_bench.cli").build_parser(),
    "search": lambda: importlib.import_module("search.cli").build_parser(),
    "demo closed-loop": lambda: importlib.import_module("demo.closed_loop").build_parser(),
    "convert": lambda: importlib.import_module("convert.cli").build_parser(),
    "convert head-bench": lambda: importlib.import_module("convert.cli").bench_parser(),
    "quantize": lambda: importlib.import_module("quantize.cli").build_parser(),
    "parity": lambda: importlib.import_module("parity.cli").build_parser(),
    "demo": lambda: importlib.import_module("demo.cli").build_parser(),
    "quantize qat": lambda: importlib.import_module("quantize.qat_cli").build_parser(),
    "predict": lambda: importlib.import_module("predict.cli").build_parser(),
    "profile": lambda: importlib.import_module("runtime.tflite_profile").build_parser(),
}


def walk(parser, prefix=()):
    """(argv prefix, action) for every option of the parser and of its subcommands."""
    for act in parser._actions:
        if isinstance(act, argparse._SubParsersAction):
            for name, sub in act.choices.items():
                yield from walk(sub, (*prefix, name))
        elif act.option_strings and act.nargs != 0:
            yield prefix, act


def options():
    for stage, make in PARSERS.items():
        for prefix, act in walk(make()):
            yield pytest.param(stage, prefix, act.option_strings[-1], id=f"{stage} {' '.join(prefix)} "
                               f"{act.option_strings[-1]}".replace("  ", " "))


def parse_error(parser, argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    err = capsys.readouterr().err
    return e.value.code, err


@pytest.mark.parametrize("stage, prefix, opt", list(options()))
def test_every_option_refuses_bad_values_in_one_line(stage, prefix, opt, capsys):
    parser = PARSERS[stage]()
    act = next(a for p, a in walk(parser) if p == prefix and opt in a.option_strings)
    if act.type in (None, str, Path) and act.choices is None:
        pytest.skip("free text (a name, a path written later, an adb serial): checked where it is used")
    assert act.type not in (int, float), f"{stage} {opt}: a bare {act.type.__name__}: use a posekit.cli type"
    bad = list(getattr(act.type, "bad", [])) if act.type is not None else []
    if act.choices is not None:
        bad.append("no-such-choice")
    assert bad, f"{stage} {opt}: type {act.type} has no .bad examples"
    for value in bad:
        code, err = parse_error(parser, [*prefix, f"{opt}={value}"], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (stage, opt, value, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and opt in lines[0], (stage, opt, value, err)
        assert "Traceback" not in err


TABLE = [  # the issue's rows, word for word
    ("train", ["--batch-size", "0"]), ("train", ["--lr", "-1"]), ("train", ["--lr", "nan"]),
    ("train", ["--threads", "-2"]), ("train", ["--workers", "-1"]), ("train", ["--device", "tpu"]),
    ("search", ["--device", "pixel", "--batch-size", "0"]),
    ("device_bench", ["lut", "--device", "host", "--threads", "0"]),
    ("device_bench", ["lut", "--device", "host", "--chunk", "0"]),
]


@pytest.mark.parametrize("stage, argv", TABLE, ids=[" ".join([s, *a]) for s, a in TABLE])
def test_issue_table_options(stage, argv, capsys):
    code, err = parse_error(PARSERS[stage](), argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error: argument" in err, err


def test_cuda_without_a_gpu_is_refused(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = parse_error(PARSERS["train"](), ["--device", "cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_good_values_still_parse():
    a = PARSERS["train"]().parse_args(["--lr", "1e-3", "--device", "cpu", "--input", "64X48", "--workers", "0",
                                       "--half-body", "0", "--steps", "0.5", "0.9"])
    assert a.lr == 1e-3 and a.device == "cpu" and a.input == (64, 48) and a.steps == [0.5, 0.9]
    s = PARSERS["search"]().parse_args(["--device", "flops", "--input", "128x96", "--threads", "0"])
    assert s.input == (128, 96) and s.threads == 0
    assert cli.parse_hxw("256x192") == cli.parse_hxw((256, 192)) == (256, 192)
    with pytest.raises(ValueError, match="multiples of 16"):
        cli.parse_hxw("100x96", 16)


def test_every_stage_main_answers_a_bad_option_in_one_line(capfd):
    """Through main() (what `python -m <stage>` runs): argparse's exit 2, one line, no traceback (capfd: `quantize
    run` is convert's CLI in a child process)."""
    mains = {"train": ["--epochs", "0"], "model": ["info", "--family", "-1"], "search": ["--device", "tpu"],
             "device_bench": ["bench", "--model", "x.tflite", "--runs", "0"], "convert": ["--jobs", "0"],
             "quantize": ["--calib", "-3"], "parity": ["--threads", "0"], "demo": ["--device", "tpu"]}
    for stage, argv in mains.items():
        rc = importlib.import_module("model.cli" if stage == "model" else f"{stage}.__main__").main(argv)
        err = capfd.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), (stage, err)


@pytest.mark.parametrize("argv,says", [
    (["bench", "--model", "x.tflite", "--no-xnnpack", "--kernels", "xnnpack"], "--no-xnnpack"),
    (["bench", "--model", "x.tflite", "--threads", "2", "--clock", "cpu"], "only with --threads 1"),
    (["bench", "--model", "x.tflite", "--taskset", "f0"], "--taskset: phone options"),
    (["lut", "--device", "host", "--space", "default,"], "an empty entry"),
    (["lut", "--device", "host", "--space", "default,default"], "a space named twice"),
    (["bench", "--model", "no-such.tflite"], "no such file"),
])
def test_option_combinations_are_refused_before_any_work(argv, says, capfd):
    """Options valid alone, contradictory together (or a file that is not there): one line, exit 2, before an
    interpreter or a conversion starts (the hostile-input pass found each running on)."""
    from device_bench.cli import main

    rc = main(argv)
    err = capfd.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and says in err and "INFO" not in err, err
