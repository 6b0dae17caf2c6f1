"""A folder we did not write (an artifacts folder someone sent, a run folder reused) is untrusted input: every path
taken from it or from its manifest must stay inside it after symlinks and `..` are resolved, and nothing we write
under it may land outside it through a symlink. The one place those rules live."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path, PurePosixPath

from posekit.errors import UserError

# The folders writes are confined to now (posekit.io.atomic_path checks every output against them).
_CONFINED: ContextVar[tuple[Path, ...]] = ContextVar("confined", default=())


def _resolve(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise UserError(f"{p}: cannot resolve the path ({e})") from None


def relative_part_error(rel: str) -> str | None:
    """Why `rel` (a path written in a manifest or config) is not a plain relative path inside its folder, or None."""
    if not rel or "\\" in rel or "\0" in rel:
        return "expected a relative path with / separators"
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or any(x == ".." for x in parts):
        return "must stay inside the folder (no absolute path, no '..' part)"
    return None


def inside(root: str | Path, rel: str | Path, where: str | None = None) -> Path:
    """root/rel, refused with one UserError (naming `where`, e.g. 'manifest.json: artifacts[2].file') unless it
    stays inside `root` once symlinks and '..' are resolved. The path returned is the unresolved root/rel (what
    messages and manifests name); what it designates is inside root."""
    root = Path(root)
    rel_s = rel.as_posix() if isinstance(rel, Path) else str(rel)
    why = relative_part_error(rel_s) if not isinstance(rel, Path) or not rel.is_absolute() else "an absolute path"
    label = where or str(root / rel_s)
    if why:
        raise UserError(f"{label}: {rel_s}: {why}")
    p = root / rel_s
    real_root = _resolve(root)
    real = _resolve(p)
    if real != real_root and not real.is_relative_to(real_root):
        raise UserError(f"{label}: {rel_s} leads out of {root} (to {real}) through a symlink; refused")
    return p


def check_confined(path: str | Path) -> None:
    """Refuse (one UserError) an output whose folder lies outside every folder confined() now holds."""
    roots = _CONFINED.get()
    if not roots:
        return
    p = Path(path)
    parent = _resolve(p.parent)
    if not any(parent == r or parent.is_relative_to(r) for r in roots):
        raise UserError(f"{p}: refused: writing it would land in {parent}, outside {' / '.join(map(str, roots))} "
                        "(a symlink in the folder leads out)")


@contextmanager
def confined(*roots: str | Path):
    """Within the block, every file written through posekit.io lands inside one of `roots` (resolved now), so a
    symlink planted in a folder we did not make cannot carry a report, cache or plot elsewhere."""
    token = _CONFINED.set(_CONFINED.get() + tuple(_resolve(Path(r)) for r in roots))
    try:
        yield
    finally:
        _CONFINED.reset(token)


def output_folder(root: str | Path, sub: str) -> Path:
    """root/sub as an output folder under a folder we did not write (e.g. <model-dir>/parity): refused when it is a
    symlink or otherwise leads out of root."""
    p = Path(root) / sub
    if p.is_symlink():
        raise UserError(f"{p}: a symlink (to {_resolve(p)}) stands where the output folder goes; refused (remove it "
                        "or pass --out)")
    return inside(root, sub)
