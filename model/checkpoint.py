"""Checkpoints: one file format that train writes and convert, parity, search and the demo read.

A checkpoint is a dict of tensors and plain Python only, so ``torch.load(path, weights_only=True)`` opens it::

    format: "posenas-checkpoint/1"
    arch:   Arch.to_dict()       (the network is rebuilt from it: no pickled classes)
    model:  state_dict           (of the bare PoseNet, never a DDP/compiled wrapper)
    ...     anything else the writer adds: epoch, optimizer, scheduler, rng, metrics, best_ap, args

Written atomically (temp file + rename), so a kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from posekit.errors import UserError
from posekit.io import atomic_path, first_line, require_file

from .arch import Arch, from_dict
from .net import PoseNet

FORMAT = "posenas-checkpoint/1"


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP / DataParallel / torch.compile wrappers."""
    while hasattr(net, "module") or hasattr(net, "_orig_mod"):
        net = getattr(net, "module", None) or net._orig_mod
    return net


def save_checkpoint(path, net: torch.nn.Module, arch: Arch, **state) -> Path:
    """Write {format, arch, model, **state} atomically; `state` must hold tensors / plain Python only."""
    model = {k: v.contiguous() for k, v in unwrap(net).state_dict().items()}  # plain NCHW even if trained NHWC
    ckpt = {"format": FORMAT, "arch": arch.to_dict(), "model": model, **state}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_state_file(path, what: str = "checkpoint", map_location="cpu"):
    """What one of the project's torch state files holds (a checkpoint, a QAT twin, a run's last.pt, a search
    state), loaded with weights_only=True: tensors, numbers, strings, lists and dicts only, so a file that asks to
    build objects (code) is refused, never run. A missing, truncated or foreign file: a one-line UserError."""
    p = require_file(path, what)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{p}: not a loadable {what}: refused, it holds objects or code (only tensors, numbers, "
                        "lists and dicts are loaded)") from None
    except Exception as e:  # torch raises many types for a corrupt / non-torch file
        raise UserError(f"{p}: not a loadable {what}: {first_line(e) or type(e).__name__}") from None


def load_weights(module: torch.nn.Module, state: dict, where: str) -> torch.nn.Module:
    """module.load_state_dict(state), a mismatch as one line naming `where`."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{where}: model: weights do not match the arch: {first_line(e)}") from None
    return module


def read_checkpoint(path, map_location="cpu") -> dict:
    """The raw checkpoint dict (weights_only), with a one-line UserError for a missing or foreign file."""
    p = Path(path)
    ckpt = load_state_file(p, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or "arch" not in ckpt or "model" not in ckpt:
        raise UserError(f"{p}: not a posenas checkpoint (needs 'arch' and 'model'; format {FORMAT})")
    return ckpt


def load_checkpoint(path, map_location="cpu") -> tuple[PoseNet, Arch, dict]:
    """(PoseNet in eval mode with the weights, its Arch, the whole checkpoint dict)."""
    ckpt = read_checkpoint(path, map_location)
    arch = from_dict(ckpt["arch"], src=f"{path}: arch")
    net = load_weights(PoseNet(arch), ckpt["model"], str(path))
    return net.eval(), arch, ckpt
