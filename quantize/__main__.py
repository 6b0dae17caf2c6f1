"""python -m quantize [run] ...: the quantized artifacts (TFLite fp16 / int8 / int8-dynamic, Core ML int8 weights and
palettized) added to artifacts/<model>/manifest.json, with the same options as python -m convert (reuses an fp32
.tflite already in the output folder when it matches the model). `run` is the default subcommand."""

from __future__ import annotations

import argparse
import sys

from convert.cli import add_model_args, quiet_libraries, run
from posekit.cli import ArgumentParser, main_guard


def run_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """the quantized artifacts of a model (default subcommand)"""
    p = p or ArgumentParser(prog="python -m quantize run", description=__doc__)
    add_model_args(p, "quantized")
    return p


# subcommand -> (build its parser, run it with the parsed args). Another subcommand (e.g. `qat`) adds itself here.
SUBCOMMANDS = {"run": (run_parser, run)}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m quantize", description=__doc__,
                       epilog="`python -m quantize run --help`: the options of run (--targets, --calib, --data, ...)")
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (build, _) in SUBCOMMANDS.items():
        build(sub.add_parser(name, description=__doc__, help=(build.__doc__ or name).splitlines()[0]))
    return p



@main_guard
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["qat"]:  # quantization-aware training: python -m quantize qat --help
        from .qat_main import main as qat_main

        return qat_main(argv[1:])
    quiet_libraries()
    argv = sys.argv[1:] if argv is None else list(argv)
    # `python -m quantize --ckpt ...` = `python -m quantize run --ckpt ...`; `--help` alone lists the subcommands
    if argv not in (["-h"], ["--help"]) and (not argv[:1] or argv[0] not in SUBCOMMANDS):
        argv = ["run", *argv]
    a = build_parser().parse_args(argv)
    return SUBCOMMANDS[a.command][1](a)


if __name__ == "__main__":
    sys.exit(main())
