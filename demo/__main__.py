"""`python -m demo`: runs demo.cli (where the parser and the commands live)."""

import sys

from demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
