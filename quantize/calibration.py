"""The one source of calibration and evaluation data for everything that ships or is timed as int8: real person
crops from the bundled data (data/coco-mini for 17 joints, data/mpii-mini for 16) or from `--data`, never random
tensors. convert (int8 artifacts), device_bench (host int8 LUT parts, fidelity nets) and search's closed loop all
call `calibration_batches` (or `part_batches`, its adapter to an inner part's input shape)."""

from __future__ import annotations

import functools
import warnings

import torch

from posekit.errors import UserError
from posekit.keypoints import DEFAULT_COCO, DEFAULT_MPII

CALIB_SPLIT = {17: "train2017", 16: "valid"}  # calibrate on train so that parity can evaluate on val
EVAL_SPLIT = {17: "val2017", 16: "valid"}


def _shape(arch_or_size, num_joints: int | None):
    """(input_size, num_joints) from an Arch (or anything with .input_size/.num_joints) or an (H, W) pair."""
    if hasattr(arch_or_size, "input_size"):
        return tuple(arch_or_size.input_size), num_joints or arch_or_size.num_joints
    return tuple(arch_or_size), num_joints or 17


@functools.lru_cache(maxsize=8)
def _crops(input_size: tuple[int, int], num_joints: int, data: str | None, n: int, split: str | None):
    from posekit.data import CocoPose, MpiiPose

    with warnings.catch_warnings():  # persons without labelled joints are skipped: fine for calibration crops
        warnings.simplefilter("ignore", UserWarning)
        if num_joints == 17:
            ds = CocoPose(data or DEFAULT_COCO, split or CALIB_SPLIT[17], input_size, train=False)
        elif num_joints == 16:
            ds = MpiiPose(data or DEFAULT_MPII, split or CALIB_SPLIT[16], input_size, train=False)
        else:
            raise UserError(f"calibration data: no bundled dataset with {num_joints} joints (give --data)")
    if len(ds) == 0:
        raise UserError(f"{data or 'bundled data'}: no person crops for calibration")
    idx = sorted({int(i * len(ds) / n) for i in range(min(n, len(ds)))})  # evenly spread, deterministic
    return tuple(torch.as_tensor(ds[i]["image"])[None].float() for i in idx)


def calibration_batches(arch, data: str | None = None, n: int = 32, split: str | None = None,
                        num_joints: int | None = None) -> list[torch.Tensor]:
    """n real person crops (1, 3, H, W), normalized as the network sees them; the training split by default.

    arch: an Arch (its input size and joint count pick the size and the dataset) or an (H, W) pair (COCO).
    data: dataset root (COCO tree for 17 joints, MPII for 16); None = the bundled one."""
    if n < 1:
        raise UserError(f"calibration: needs at least 1 crop, got {n}")
    size, joints = _shape(arch, num_joints)
    return [b.clone() for b in _crops(size, joints, None if data is None else str(data), n, split)]


def eval_batches(arch, data: str | None = None, n: int = 8, num_joints: int | None = None) -> list[torch.Tensor]:
    """Held-out crops (the val split) on which quantized candidates are scored."""
    size, joints = _shape(arch, num_joints)
    return calibration_batches(size, data, n, EVAL_SPLIT.get(joints), joints)


def part_batches(in_chw, n: int = 8, data: str | None = None) -> list[torch.Tensor]:
    """Calibration input for an inner part of a network (a LUT entry's block), shape (1, C, H, W): real crops
    resized to H x W and their 3 channels repeated to C. The part then sees natural-image statistics (edges,
    flat regions, the crops' value range) instead of Gaussian noise; the stem (C = 3 at the input size) gets the
    crops themselves."""
    c, h, w = (int(v) for v in in_chw)
    crops = calibration_batches((h, w), data, n)
    reps = -(-c // 3)
    return [x.repeat(1, reps, 1, 1)[:, :c].contiguous() for x in crops]
