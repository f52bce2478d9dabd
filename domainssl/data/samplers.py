"""Samplers that say what each process reads, as a pure function of the run seed, the epoch
and the process's global rank, so that processes never duplicate each other's samples or
views and a resumed run replays the uninterrupted one.

At the start of each epoch a sampler also reseeds the process's random state (the views
made on the device, the seeds DataLoader workers start from) from ``(seed, epoch, rank)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import lightning as L
import torch
from torch.utils.data import Sampler

from domainssl.data.seeds import stream_seed


@dataclass(frozen=True)
class Shard:
    """Which process this is, and of how many."""

    rank: int = 0
    world: int = 1


def first_epoch() -> int:
    """The epoch of a sampler used outside a Trainer."""
    return 0


ItemT = TypeVar("ItemT")


class EpochSampler(Sampler[ItemT]):
    """Base: this process's share of an epoch, reseeding its random state first.

    Args:
        seed: the run seed.
        epoch_of: returns the epoch about to be iterated (read when iteration starts).
        shard: this process's global rank and the process count.
    """

    def __init__(self, seed: int, epoch_of: Callable[[], int], shard: Shard) -> None:
        self.seed, self.epoch_of, self.shard = seed, epoch_of, shard

    def __iter__(self) -> Iterator[ItemT]:
        epoch = self.epoch_of()
        seed = stream_seed(self.seed, epoch, self.shard.rank)
        L.seed_everything(seed, workers=True, verbose=False)  # views + worker seeds
        return iter(self.items(epoch))

    def items(self, epoch: int) -> list[ItemT]:
        """What this process reads in ``epoch``, in order."""
        raise NotImplementedError

    def share(self, everyone: list[ItemT]) -> list[ItemT]:
        """Every ``world``-th item from position ``rank``, equally many for each process."""
        count = len(everyone) // self.shard.world
        return everyone[self.shard.rank : count * self.shard.world : self.shard.world]


class ShuffleSampler(EpochSampler[int]):
    """A shuffle of ``size`` samples drawn from ``(seed, epoch)`` (the same on every
    process), of which each process takes every ``world``-th from position ``rank``. The
    ``size % world`` samples that do not divide evenly are left out that epoch (others next
    epoch), so every process has as many samples and none is shared."""

    def __init__(
        self,
        size: int,
        seed: int,
        epoch_of: Callable[[], int] = first_epoch,
        shard: Shard = Shard(),
    ) -> None:
        super().__init__(seed, epoch_of, shard)
        self.size = size

    def __len__(self) -> int:
        return self.size // self.shard.world

    def items(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
        return self.share(torch.randperm(self.size, generator=generator).tolist())


class DrawSampler(EpochSampler[int]):
    """Keys of this process's random draws of an epoch (windows of scenes, patches of
    slides), ``per_epoch`` in all: distinct for every epoch and process. A dataset of draws
    turns a key into its draw with a generator seeded by ``(seed, key)``, so what is read
    depends on neither the process's nor the worker's random state."""

    def __init__(
        self,
        per_epoch: int,
        seed: int,
        epoch_of: Callable[[], int] = first_epoch,
        shard: Shard = Shard(),
    ) -> None:
        super().__init__(seed, epoch_of, shard)
        self.per_epoch = per_epoch

    def __len__(self) -> int:
        return self.per_epoch // self.shard.world

    def items(self, epoch: int) -> list[int]:
        first = epoch * self.per_epoch + self.shard.rank * len(self)
        return list(range(first, first + len(self)))
