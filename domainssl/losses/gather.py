"""All-gather across processes, with or without gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as all_gather_with_grad


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside distributed runs."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0; gradients flow back to each rank.

    The backward of the gather sums the gradients of all ranks' losses for each rank's
    rows; DDP then averages parameter gradients over ranks, so the result equals the
    gradient of the mean loss over the global batch.
    """
    if world()[1] == 1:
        return tensor
    return torch.cat(all_gather_with_grad(tensor), dim=0)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 (no gradients)."""
    _, size = world()
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def shuffle_across_ranks(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the global batch in an order drawn on rank 0 (MoCo's
    shuffle-BN, He et al. 2020): BatchNorm then sees other samples with each key than with
    its query. Every rank must hold a batch of one size. Returns the share and the order
    that :func:`unshuffle_across_ranks` undoes."""
    rank, size = world()
    everyone = gather_no_grad(batch)  # (size * B, ...)
    order = torch.randperm(len(everyone), device=batch.device)
    if size > 1:
        dist.broadcast(order, src=0)
    return everyone[order.view(size, -1)[rank]], order


@torch.no_grad()
def unshuffle_across_ranks(outputs: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The outputs of this rank's own samples, in its batch's order, from the outputs of
    the shares that :func:`shuffle_across_ranks` handed out in ``order``."""
    rank, size = world()
    everyone = gather_no_grad(outputs)
    return everyone[torch.argsort(order).view(size, -1)[rank]]
