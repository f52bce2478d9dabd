"""Fine-tuning on several devices: one process per device (DDP), the trained weights handed
back to the calling process, which evaluates once on the whole test set.

Each process trains a :class:`~torch.nn.parallel.DistributedDataParallel` replica on its
share of every batch (BatchNorm statistics from its own share, as in DDP pretraining);
gradients are averaged, so the replicas stay identical. Rank 0 keeps the best weights.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from domainssl.data.samplers import Shard


def worker_device() -> torch.device:
    """This training process's device: its GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_sum(value: float, device: torch.device) -> float:
    """``value`` summed over the processes (itself in one process)."""
    if not dist.is_initialized():
        return value
    total = torch.tensor([float(value)], device=device)
    dist.all_reduce(total)
    return float(total.item())


def replicate(model: nn.Module, shard: Shard, device: torch.device) -> nn.Module:
    """``model`` on ``device``, wrapped in DDP when there are several processes."""
    model.to(device)
    if shard.world == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def rank_zero_decides(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process (time budgets: one clock decides)."""
    return bool(rank_zero_value(float(flag), device))


def rank_zero_value(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every process (elapsed time: one clock for all)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def _worker(
    rank: int,
    world: int,
    cuda: bool,
    folder: str,
    train: Callable[..., tuple[dict[str, torch.Tensor], Any]],
    args: tuple[Any, ...],
) -> None:
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    init = f"file://{Path(folder) / 'rendezvous'}"
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    try:
        # spawned processes receive tensors in shared memory: give each its own weights,
        # or every optimizer step would be applied once per process to the same storage
        own = tuple(copy.deepcopy(arg) if isinstance(arg, nn.Module) else arg for arg in args)
        state, result = train(*own, Shard(rank, world))
        if rank == 0:
            torch.save({"state": state, "result": result}, Path(folder) / "trained.pt")
    finally:
        dist.destroy_process_group()


def train_in_processes(
    train: Callable[..., tuple[dict[str, torch.Tensor], Any]],
    args: tuple[Any, ...],
    world: int,
    cuda: bool,
) -> tuple[dict[str, torch.Tensor], Any]:
    """Run ``train(*args, shard)`` in ``world`` processes (rank ``i`` on ``cuda:i`` or the
    CPU) and return rank 0's (weights, result). ``train`` must be a module-level function,
    ``args`` picklable (models on the CPU) and the result plain values (numbers, lists,
    dicts)."""
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, args=(world, cuda, folder, train, args), nprocs=world, join=True)
        saved = Path(folder) / "trained.pt"
        trained = torch.load(saved, weights_only=True)
    return trained["state"], trained["result"]


def train_on_devices(
    train: Callable[..., tuple[dict[str, torch.Tensor], Any]],
    model: nn.Module,
    args: tuple[Any, ...],
    devices: int,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], Any]:
    """``train(model, *args, shard)`` in this process on ``device``, or in ``devices``
    processes (:func:`train_in_processes`); ``model`` ends on ``device`` either way."""
    if devices == 1:
        return train(model.to(device), *args, Shard())
    trained = train_in_processes(train, (model.cpu(), *args), devices, device.type == "cuda")
    model.to(device)
    return trained
