"""python -m quantize: the quantized variants alone (same options as python -m convert; reuses an fp32 .tflite
already in the output folder when it matches the model)."""

from __future__ import annotations

import argparse
import sys

from convert.__main__ import add_model_args, quiet_libraries, run
from posekit.cli import ArgumentParser, main_guard


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m quantize", description=__doc__)
    add_model_args(p, "quantized")
    return p


@main_guard
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["qat"]:  # quantization-aware training: python -m quantize qat --help
        from .qat_main import main as qat_main

        return qat_main(argv[1:])
    quiet_libraries()
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
