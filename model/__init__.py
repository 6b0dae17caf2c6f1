"""Shared network code: arch files, the PoseNet builder, heads, FLOPs, compound scaling, LUT keys, deploy
rewrites. Imports no stage."""

from .arch import Arch, Head, Layer, Op, Stage, decode_op, dump, from_dict, load, parse_block_op, shipped  # noqa: F401
from .net import PoseNet, build  # noqa: F401
