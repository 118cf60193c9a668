"""Several processes (torchrun / accelerate launch): who computes what, and who writes.

Under a launcher every process runs the same command.  :func:`init_from_env` joins the process
group (NCCL on GPUs, gloo on CPUs) and picks this process's device; the scoring engine then shards
its rows across processes and gathers them in order, every stage computes on every process, and
only rank 0 writes files (:func:`is_writer`), with barriers so that no process reads a stage
before it is complete.
"""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_writer() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def init_from_env(device: str | None) -> str | None:
    """Join the process group when launched with WORLD_SIZE > 1; return this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    dist = torch.distributed
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"
