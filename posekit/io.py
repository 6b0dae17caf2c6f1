"""Write files so that nothing half-written is ever seen: write to a temp name beside the target, then rename.
Outputs never destroy what is there: a file is never written where a folder, a device, a socket or a symlink out
of its folder stands, and only our own temp names are ever removed (`check_writable` says so before long work).
Also the one-line form of an exception (`first_line`) that every error message quotes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from posekit.errors import UserError
from posekit.safe_paths import check_confined

# Directory artifacts a writer makes whole (a Core ML package): one may replace an older one of the same name.
PACKAGE_SUFFIXES = (".mlpackage",)
# OS errors that mean "this output cannot be written here": one line naming the path, not a traceback.
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST,
                 errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV}


def _nearest_existing(p: Path) -> Path:
    """`p` or its nearest ancestor that exists (as a name: a dangling symlink counts as existing)."""
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _leaves_folder(p: Path) -> Path | None:
    """Where a symlink `p` leads when that is outside the folder holding it, else None."""
    if not p.is_symlink():
        return None
    try:
        target = p.resolve()
    except (OSError, RuntimeError):  # a symlink loop leads nowhere we could check
        return Path(os.readlink(p))
    parent = p.parent.resolve()
    return None if target.is_relative_to(parent) and target != parent else target


def _why_not_writable(path: Path, kind: str) -> str | None:
    """Why `path` cannot be written as a `kind` ('file' or 'dir') without destroying something, or None."""
    if os.path.lexists(path):
        away = _leaves_folder(path)
        if away is not None:
            return f"a symlink leading out of its folder (to {away}); name the real path"
        st = os.stat(path) if path.exists() else os.lstat(path)
        if kind == "file":
            if stat.S_ISDIR(st.st_mode) and path.suffix not in PACKAGE_SUFFIXES:
                return "a folder stands there (a file would replace it and everything in it)"
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                return "not a regular file (a device, pipe or socket stands there)"
            holder = path.parent
        else:
            if not stat.S_ISDIR(st.st_mode):
                return "a file stands there, not a folder"
            holder = path
    else:
        holder = _nearest_existing(path.parent)
        if not holder.is_dir():
            return f"{holder} is not a folder"
    if not os.access(holder, os.W_OK | os.X_OK):  # access() also fails on a read-only file system (EROFS)
        ro = _read_only_fs(holder)
        return f"{holder} is on a read-only file system" if ro else f"no permission to write in {holder}"
    return None


def _read_only_fs(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_writable(path: str | Path, kind: str = "file") -> Path:
    """`path` as a Path if an output `kind` ('file' or 'dir') can be written there without destroying anything
    (missing parents may be made); else one UserError naming the path. Called when options are parsed, so a bad
    output fails before the long work, and again by atomic_path when the file is written."""
    p = Path(path)
    why = _why_not_writable(p, kind)
    if why:
        raise UserError(f"{p}: cannot write the output {'folder' if kind == 'dir' else 'file'} here: {why}")
    return p


def os_error(e: OSError, path) -> UserError | None:
    """An OSError that means the output cannot be written (permission, read-only, full disk, a file in the path)
    as one UserError naming the path; None for others."""
    if e.errno in _WRITE_ERRNOS:
        return UserError(f"{e.filename or path}: cannot write: {os.strerror(e.errno)}")
    return None


def make_dirs(path: str | Path) -> Path:
    """mkdir -p, with a file in the way, no permission or a read-only file system as one UserError line."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (os_error(e, p) or e) from None
    return p


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temp path in the target's folder; on success it is renamed onto `path` (os.replace is atomic).

    `suffix` keeps an extension some writers need (e.g. '.mlpackage', '.pt'); on error the temp is removed.
    Refused (one UserError, before the writer runs) where a folder, a non-regular file or a symlink out of the
    folder stands; a package folder (.mlpackage) is replaced only by a new package folder.
    """
    path = Path(path)
    check_writable(path, "file")
    check_confined(path)
    make_dirs(path.parent)
    check_confined(path)  # again: a folder just made may sit under a symlink
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                                   dir=path.parent)
    except OSError as e:
        raise (os_error(e, path) or e) from None
    os.close(fd)
    os.unlink(tmp)  # writers create it themselves (some make a directory, e.g. .mlpackage)
    tmp = Path(tmp)
    old = None
    try:
        try:
            yield tmp
        except OSError as e:  # the writer hit a full disk, a quota, a permission: one line naming the output
            err = os_error(e, path)
            if err is None:
                raise
            raise err from None
        if path.is_dir() and not path.is_symlink():
            if not (tmp.is_dir() and path.suffix in PACKAGE_SUFFIXES):
                raise UserError(f"{path}: cannot write the output file here: a folder stands there")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)  # our own temp name now holds the old package
        os.replace(tmp, path)
    finally:
        for t in (tmp, old):
            if t is not None and os.path.lexists(t):
                shutil.rmtree(t) if t.is_dir() and not t.is_symlink() else t.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj, indent: int = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_figure(fig, path: str | Path, dpi: int = 80) -> Path:
    """A matplotlib figure written atomically (format from the suffix, PNG when none), then closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files in sorted order (an .mlpackage is a directory)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def require_file(path, what: str = "file") -> Path:
    """`path` as a Path if it is a file, else a one-line UserError: '<path>: no such <what>'."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such {what}")
    return p


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when the message is empty."""
    lines = str(e).strip().splitlines()
    return lines[0].strip() if lines else type(e).__name__
