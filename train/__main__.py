"""`python -m train`: runs train.cli (where the parser and the commands live)."""

import sys
import warnings

from train.cli import main

if __name__ == "__main__":
    warnings.formatwarning = lambda msg, *args, **kw: f"warning: {msg}\n"  # one line, no source excerpt
    sys.exit(main())
