"""The search's data: the training set split into two disjoint halves by image (w steps / alpha steps)."""

from __future__ import annotations

import warnings

import torch
from torch.utils.data import DataLoader, Subset

from posekit.errors import UserError


def split_by_image(image_ids: list[int]) -> tuple[list[int], list[int]]:
    """Sample indices -> (w half, alpha half): no image in both, halves balanced by person count (greedy)."""
    by_img: dict[int, list[int]] = {}
    for i, img in enumerate(image_ids):
        by_img.setdefault(int(img), []).append(i)
    halves: tuple[list[int], list[int]] = ([], [])
    for img in sorted(by_img, key=lambda k: (-len(by_img[k]), k)):
        halves[len(halves[0]) > len(halves[1])].extend(by_img[img])
    return sorted(halves[0]), sorted(halves[1])


def search_halves(root, input_size, num_joints: int, limit: int | None = None, cache: bool = True):
    """Two disjoint Subsets of `posekit.data.CocoPose(root, "train2017", train=True)`."""
    from posekit.data import CocoPose

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped persons without joints are expected on COCO
        ds = CocoPose(root=root, split="train2017", input_size=input_size, train=True, num_joints=num_joints,
                      cache_images=cache)
    ids = [s["image_id"] for s in ds.samples]
    if limit:
        ids = ids[:limit]
    w_idx, a_idx = split_by_image(ids)
    if not w_idx or not a_idx:
        raise UserError(f"{ds.ann_file}: the search needs persons on at least 2 images (found {len(set(ids))})")
    return Subset(ds, w_idx), Subset(ds, a_idx)


def loader(ds, batch_size: int, seed: int, epoch: int, workers: int = 0, rank: int = 0, world: int = 1):
    """Shuffled, same order for the same (seed, epoch): what makes a resumed epoch replay exactly."""
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds, world, rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size, sampler=sampler, num_workers=workers, generator=gen, drop_last=True)
    return DataLoader(ds, min(batch_size, len(ds)), shuffle=True, num_workers=workers, generator=gen, drop_last=True,
                      persistent_workers=False)
