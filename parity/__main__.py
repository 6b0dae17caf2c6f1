"""`python -m parity`: runs parity.cli (where the parser and the commands live)."""

import sys

from parity.cli import main

if __name__ == "__main__":
    sys.exit(main())
