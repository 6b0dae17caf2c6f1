"""`python -m quantize`: runs quantize.cli (where the parser and the subcommands live)."""

import sys

from quantize.cli import main

if __name__ == "__main__":
    sys.exit(main())
