"""`python -m model`: runs model.cli (where the parser and the commands live)."""

import sys

from model.cli import main

if __name__ == "__main__":
    sys.exit(main())
