"""`python -m search [closed-loop] ...`: the search (search/cli.py) or the closed loop (search/closed_loop.py, which
builds on search/cli.py: so the choice between them is made here)."""

import sys

from posekit.cli import main_guard


@main_guard
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["closed-loop"]:
        from search.closed_loop import main as closed_loop_main  # torch: only when it runs

        return closed_loop_main(argv[1:])
    from search.cli import main as search_main

    return search_main(argv)


if __name__ == "__main__":
    sys.exit(main())
