"""`python -m predict`: runs predict.cli (where the parser and the commands live)."""

import sys

from predict.cli import main

if __name__ == "__main__":
    sys.exit(main())
