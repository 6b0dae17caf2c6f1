"""The one way every stage CLI reports bad input: `error: <one line>` on stderr and exit code 2."""

from __future__ import annotations

import argparse
import math
import sys
from functools import wraps
from pathlib import Path

from posekit.errors import UserError


def main_guard(fn):
    """Wrap a CLI main(argv) so a UserError becomes one clear line and exit 2 (no traceback)."""

    @wraps(fn)
    def run(argv=None):
        try:
            return fn(argv)
        except SystemExit as e:  # argparse: --help (0) or a bad option (2, its one line already printed)
            if isinstance(e.code, int) or e.code is None:
                return e.code or 0
            raise
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return run


class ArgumentParser(argparse.ArgumentParser):
    """argparse without prefix matching: `--head mbv1` must not be read as `--headboxes mbv1`. Subcommand parsers
    (add_subparsers) are made of this same class, so they refuse abbreviations too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        """One line, `error: <what> (<prog> --help)`, exit 2, as every other bad input: argparse's message without
        its many-line usage block (which buries the one line that matters; --help prints it)."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# ---- option types: every option is validated when parsed ------------------------------------------------------
# Each is an argparse `type=`: a bad value becomes argparse's own one-line `error: argument --x: ...`, exit 2.
# `.bad` lists values each type refuses (tests/test_cli.py walks every stage's parser with them).


def _number(kind, s, what):
    try:
        v = kind(s)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
    return v


def int_range(lo: int | None = None, hi: int | None = None):
    """An int type with lo <= value <= hi (either bound optional)."""
    what = ("an integer" + (f" >= {lo}" if lo is not None and hi is None else "")
            + (f" in [{lo}, {hi}]" if lo is not None and hi is not None else "")
            + (f" <= {hi}" if hi is not None and lo is None else ""))

    def parse(s):
        v = _number(int, s, what)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    parse.__name__ = f"int_range({lo}, {hi})"
    parse.bad = ["abc", "1.5"] + ([str(lo - 1)] if lo is not None else []) + ([str(hi + 1)] if hi is not None else [])
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """A finite float type in the interval [lo, hi] ((lo, ...) with lo_open, (..., hi) with hi_open)."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    what = "a finite number" + (" " + " and ".join(parts) if parts else "")

    def parse(s):
        v = _number(float, s, what)
        if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and (v > hi or (hi_open and v == hi)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    parse.__name__ = f"float_range({lo}, {hi})"
    parse.bad = ["abc", "nan", "inf"] + ([str(lo - 1 if not lo_open else lo)] if lo is not None else []) \
        + ([str(hi + 1 if not hi_open else hi)] if hi is not None else [])
    return parse


positive_int = int_range(1)
nonneg_int = int_range(0)
positive_float = float_range(0.0, lo_open=True)
nonneg_float = float_range(0.0)
finite_float = float_range()
fraction = float_range(0.0, 1.0)  # a probability
seed_int = int_range(0, 2**32 - 1)  # numpy's seed range


MAX_SIDE = 4096  # a network input larger than this is a typo (100000x100000 would only end in an out-of-memory kill)


def parse_hxw(s, multiple: int = 1) -> tuple[int, int]:
    """'256x192' (or an (H, W) pair) -> (256, 192): the one HxW parser of every stage. ValueError when malformed,
    not positive, or not a multiple of `multiple` (the backbone's output stride)."""
    try:
        h, w = (int(v) for v in (s.lower().split("x") if isinstance(s, str) else s))
    except (TypeError, ValueError):
        raise ValueError(f"expected HxW, e.g. 256x192, got {s!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"expected a positive HxW, e.g. 256x192, got {s!r}")
    if max(h, w) > MAX_SIDE:
        raise ValueError(f"{h}x{w}: larger than {MAX_SIDE} a side")
    if h % multiple or w % multiple:
        raise ValueError(f"{h}x{w}: H and W must be multiples of {multiple} (the backbone's output stride)")
    return h, w


def hxw_type(multiple: int = 1, n: int = 2):
    """argparse type for 'HxW' (n=2) or 'HxWxC' (n=3) of positive ints; H and W multiples of `multiple`."""

    def parse(s):
        if n == 2:
            try:
                return parse_hxw(s, multiple)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        try:
            v = tuple(int(x) for x in s.lower().split("x"))
            assert len(v) == n and min(v) > 0
        except (ValueError, AssertionError):
            raise argparse.ArgumentTypeError(f"expected {n} positive integers as HxWxC, got {s!r}") from None
        return v

    parse.__name__ = "HxW" if n == 2 else "HxWxC"
    parse.bad = ["abc", "64x4x8", "0x48", "-64x48", "64x", "8192x8192"] if n == 2 else ["abc", "16x12", "16x0x96"]
    if multiple > 1:
        parse.bad = parse.bad + [f"{multiple + 1}x{multiple}"]
    return parse


hxw = hxw_type()


def torch_device(s: str) -> str:
    """auto | cpu | cuda | cuda:N | mps, refused unless this machine has it (torch is imported only to check)."""
    name = s.strip().lower()
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"unknown device {s!r} (auto | cpu | cuda | cuda:N | mps)")
    if kind == "cuda":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = "" if torch.version.cuda else ", a CPU-only build"
            raise argparse.ArgumentTypeError(f"{s}: this machine has no CUDA GPU (torch {torch.__version__}{build})")
        if index and int(index) >= n:
            raise argparse.ArgumentTypeError(f"{s}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")
    if kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{s}: MPS (Apple GPU) is not available on this machine")
    return name


torch_device.bad = ["tpu", "cuda:x", "gpu"]


def existing_file(s: str) -> Path:
    p = Path(s)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{s}: no such file" + (" (a folder)" if p.is_dir() else ""))
    return p


existing_file.bad = ["/nonexistent/file.json"]


def existing_dir(s: str) -> Path:
    p = Path(s)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{s}: no such folder" + (" (a file)" if p.exists() else ""))
    return p


existing_dir.bad = ["/nonexistent/folder"]


def data_dir(s: str) -> str:
    """A dataset folder that exists, kept as the text given (it is written into configs and manifests)."""
    return str(existing_dir(s)) and s


data_dir.bad = existing_dir.bad
