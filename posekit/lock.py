"""One writer per output folder: an exclusive flock on `<dir>/.lock` held for the whole run, with the holder's pid
and command line written in it so that a second writer can name it. The kernel drops the lock when the holder
dies (kill -9 included): a stale .lock file never blocks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
from pathlib import Path

from posekit.errors import UserError
from posekit.io import make_dirs

LOCK = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "this folder"):
    """Hold the folder's lock, or fail at once with a UserError naming the holder."""
    folder = Path(folder)
    created = not folder.exists()
    make_dirs(folder)
    path = folder / LOCK
    try:  # O_NOFOLLOW: a .lock planted as a symlink would have us truncate and write whatever it points at
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        why = "a symlink stands there" if e.errno == errno.ELOOP else os.strerror(e.errno)
        raise UserError(f"{path}: cannot take the folder's lock: {why}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path}: cannot take the folder's lock: not a regular file")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{folder}: {what} is being written by {holder} (wait for it to finish, or give another "
                            f"--out)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join([os.path.basename(sys.executable), *sys.argv])}\n".encode(), 0)
        try:
            yield path
        except BaseException:
            if created:  # a run refused before it wrote anything leaves no folder behind (bad input: nothing written)
                with contextlib.suppress(OSError):
                    path.unlink()
                    folder.rmdir()
            raise
    finally:
        os.close(fd)  # releases the lock
