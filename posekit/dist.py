"""torchrun / DDP plumbing: one process per device; gloo on CPU, nccl on GPU. Without torchrun: a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: str | None = None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Initialises the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    dev = torch.device(f"cuda:{local}" if cuda and world > 1 else device)
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, dev


def barrier():
    if dist.is_initialized():
        dist.barrier()


def mean_across(x: float) -> float:
    """Average a float over the processes (the reported train loss)."""
    if not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()
