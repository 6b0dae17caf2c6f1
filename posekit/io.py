"""Write files so that nothing half-written is ever seen: write to a temp name beside the target, then rename.
Also the one-line form of an exception (`first_line`) that every error message quotes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from posekit.errors import UserError


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temp path in the target's folder; on success it is renamed onto `path` (os.replace is atomic).

    `suffix` keeps an extension some writers need (e.g. '.mlpackage', '.pt'); on error the temp is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # writers create it themselves (some make a directory, e.g. .mlpackage)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


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
