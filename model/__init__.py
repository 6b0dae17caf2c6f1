"""Shared network code: arch files, the PoseNet builder, heads, FLOPs, compound scaling, LUT keys, deploy
rewrites. Imports no stage."""

from .arch import Arch, Head, Layer, Op, Stage, decode_op, dump, from_dict, load, parse_block_op, shipped  # noqa: F401


def __getattr__(name):
    """PoseNet and build on first use: model.net imports torch, and a stage's `--help` reads arch files only."""
    if name in ("PoseNet", "build"):
        from . import net

        return getattr(net, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
