"""Child processes die with their parent: PR_SET_PDEATHSIG through prctl (Linux), no heavy imports (it also runs
between fork and exec as a subprocess preexec_fn)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """The kernel SIGKILLs this process when its parent dies. If the parent is already gone (it died between fork
    and here: we were re-parented), exit at once."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
