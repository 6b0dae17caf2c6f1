"""`python -m device_bench`: runs device_bench.cli (where the parser and the commands live)."""

import sys

from device_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
