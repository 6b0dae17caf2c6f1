"""The one way every stage CLI reports bad input: `error: <one line>` on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from functools import wraps

from posekit.errors import UserError


def main_guard(fn):
    """Wrap a CLI main(argv) so a UserError becomes one clear line and exit 2 (no traceback)."""

    @wraps(fn)
    def run(argv=None):
        try:
            return fn(argv)
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
