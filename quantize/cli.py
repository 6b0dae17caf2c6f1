"""python -m quantize {run,qat}: the quantized artifacts of a model.

- run (the default subcommand): the quantized artifacts alone (TFLite fp16 / int8 / int8-dynamic, Core ML int8
  weights and palettized) added to artifacts/<model>/manifest.json. It is convert's job with another default, so it
  is an alias: `python -m convert --targets quantized [options]` in a child process (convert's options; an fp32
  .tflite already in the output folder is reused when it matches the model).
- qat: quantization-aware fine-tuning of a trained checkpoint, then a fully-integer .tflite with the learned scales
  (quantize/qat_cli.py)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from posekit.cli import ArgumentParser, main_guard
from posekit.proc import die_with_parent

CONVERT = [sys.executable, "-m", "convert", "--targets", "quantized"]  # a later --targets replaces the default


def run(argv: list[str]) -> int:
    """`python -m convert --targets quantized *argv`, in a child process that dies with this one; its exit code."""
    return subprocess.run([*CONVERT, *argv], preexec_fn=die_with_parent).returncode


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m quantize", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="`python -m quantize run --help` (convert's options), `python -m quantize qat --help`")
    sub = p.add_subparsers(dest="command", metavar="{run,qat}")
    r = sub.add_parser("run", add_help=False, help="the quantized artifacts alone: python -m convert --targets "
                                                   "quantized [options] (the default subcommand)")
    r.add_argument("args", nargs=argparse.REMAINDER, help="convert's options")
    q = sub.add_parser("qat", add_help=False, help="quantization-aware training and its fully-integer .tflite")
    q.add_argument("args", nargs=argparse.REMAINDER, help="see `python -m quantize qat --help`")
    return p


@main_guard
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["qat"]:
        from .qat_cli import main as qat_cli

        return qat_cli(argv[1:])
    if argv in (["-h"], ["--help"]):
        build_parser().parse_args(argv)  # prints the subcommands and exits 0
    # `python -m quantize --ckpt ...` = `python -m quantize run --ckpt ...`
    return run(argv[1:] if argv[:1] == ["run"] else argv)
