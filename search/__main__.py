"""`python -m search`: runs search.cli (where the parser and the commands live). The closed loop (measure, search,
convert, measure) spans stages: `python -m demo closed-loop` runs it as steps."""

import sys

from search.cli import main

if __name__ == "__main__":
    sys.exit(main())
