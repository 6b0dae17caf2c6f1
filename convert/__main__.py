"""`python -m convert`: runs convert.cli (where the parser and the commands live)."""

import sys

from convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
