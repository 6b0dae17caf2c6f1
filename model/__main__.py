"""`python -m model`: runs model.cli (where the parser and the commands live)."""

import sys

from model.cli import main

sys.exit(main())
