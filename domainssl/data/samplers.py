"""Samplers whose order (and the random state of each epoch) is a pure function of the run
seed and the epoch, so that a resumed run replays the uninterrupted one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler


class EpochSeededSampler(Sampler[int]):
    """A shuffle that is a pure function of ``(seed, epoch)``; it also reseeds the RNGs.

    Args:
        size: number of samples.
        seed: the run seed.
        epoch_of: returns the epoch about to be iterated (read when iteration starts).
    """

    def __init__(self, size: int, seed: int, epoch_of: Callable[[], int]) -> None:
        self.size, self.seed, self.epoch_of = size, seed, epoch_of

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        epoch_seed = (self.seed * 1_000_003 + self.epoch_of()) % 2**32
        L.seed_everything(epoch_seed, workers=True, verbose=False)  # crops + views of the epoch
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch_seed))
        yield from order.tolist()


def epoch_seeded(loader: DataLoader, epoch_of: Callable[[], int], seed: int) -> DataLoader:
    """``loader`` with its random shuffle replaced by :class:`EpochSeededSampler`.

    Loaders with another sampler (re-ID's modality pairs) are returned unchanged.
    """
    if not isinstance(loader.sampler, RandomSampler):
        return loader
    sampler = EpochSeededSampler(len(loader.sampler), seed, epoch_of)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
    )
