"""`python -m search [closed-loop] ...`: the search (search/cli.py) or the closed loop (search/closed_loop.py)."""

import sys

from posekit.cli import main_guard
from search import cli, closed_loop


@main_guard
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["closed-loop"]:
        return closed_loop.main(argv[1:])
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
