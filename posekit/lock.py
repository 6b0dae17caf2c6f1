"""One writer per output folder: an exclusive flock on `<dir>/.lock` held for the whole run, with the holder's pid
and command line written in it so that a second writer can name it. The kernel drops the lock when the holder
dies (kill -9 included): a stale .lock file never blocks. The holder removes the file as it lets go, so a finished
or refused run leaves no .lock in its output."""

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
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{folder}: {what} is being written by {holder} (wait for it to finish, or give another "
                            f"--out)") from None
        # the holder removes the file as it lets go: a lock taken on a file already removed (or replaced) locks
        # nothing another writer can see, so it is taken again on what stands at the path now
        if _same_file(fd, path):
            break
        os.close(fd)
    try:
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
        with contextlib.suppress(OSError):  # removed while still held (see above), so no .lock stays in the output
            if _same_file(fd, path):
                path.unlink()
        os.close(fd)  # releases the lock


def _open_lock(path: Path) -> int:
    try:  # O_NOFOLLOW: a .lock planted as a symlink would have us truncate and write whatever it points at
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        why = "a symlink stands there" if e.errno == errno.ELOOP else os.strerror(e.errno)
        raise UserError(f"{path}: cannot take the folder's lock: {why}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path}: cannot take the folder's lock: not a regular file")
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
