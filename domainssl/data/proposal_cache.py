"""Object proposals of a whole dataset: computed once in worker processes, cached, reused.

The cache is a folder of shards (``shard_<first index>.npz``, 256 images each) next to a
``meta.json`` naming the settings and dataset; a rerun computes only missing shards, and a
change of settings or data starts the cache afresh.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from domainssl.data.folder import Sample
from domainssl.io import atomic_write, atomic_write_text
from domainssl.views.proposals import ProposalSettings, propose

SHARD = 256
FULL_IMAGE = torch.tensor([0.0, 0.0, 1.0, 1.0])


@dataclass
class ProposalStore:
    """Boxes of N images, normalized to [0, 1]: ``boxes[offsets[i]:offsets[i + 1]]``."""

    boxes: torch.Tensor  # (total, 4)
    offsets: torch.Tensor  # (N + 1,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def of(self, index: int) -> torch.Tensor:
        """(K, 4) boxes of image ``index`` (K may be 0)."""
        return self.boxes[int(self.offsets[index]) : int(self.offsets[index + 1])]

    def counts(self) -> torch.Tensor:
        return self.offsets.diff()


class _Proposer(Dataset[torch.Tensor]):
    """Proposals of one image per item (run in DataLoader workers)."""

    def __init__(self, dataset: Dataset[Sample], settings: ProposalSettings) -> None:
        self.dataset, self.settings = dataset, settings

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        return propose(self.dataset[index]["image"], self.settings)


def compute_proposals(
    dataset: Dataset[Sample],
    cache_dir: Path,
    settings: ProposalSettings,
    source: str,
    num_workers: int = 0,
) -> ProposalStore:
    """Proposals of every image of ``dataset``, from the cache where already computed.

    Args:
        dataset: samples with an ``image`` (C, H, W); index order must be stable.
        cache_dir: cache folder (inside the run folder).
        settings: how proposals are made and filtered.
        source: names the data (path and preprocessing); a change invalidates the cache.
        num_workers: processes that compute proposals in parallel.
    """
    size = len(dataset)  # type: ignore[arg-type]
    meta = {"settings": settings.as_dict(), "source": source, "images": size}
    meta_file = cache_dir / "meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()) != meta:
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_file, json.dumps(meta, indent=2))
    starts = range(0, size, SHARD)
    missing = [s for s in starts if not _shard_path(cache_dir, s).is_file()]
    loader = DataLoader(
        _Proposer(dataset, settings),
        batch_sampler=[list(range(s, min(s + SHARD, size))) for s in missing],
        num_workers=num_workers,
        collate_fn=_as_list,
    )
    for start, boxes in zip(missing, loader, strict=True):
        counts = np.array([len(b) for b in boxes], dtype=np.int64)
        stacked = torch.cat([*boxes, torch.zeros(0, 4)]).numpy()
        atomic_write(_shard_path(cache_dir, start), partial(_save, boxes=stacked, counts=counts))
    return load_store(cache_dir, size)


def _save(path: Path, boxes: np.ndarray, counts: np.ndarray) -> None:
    with path.open("wb") as file:
        np.savez(file, boxes=boxes, counts=counts)


def _as_list(items: list[Any]) -> list[Any]:
    return items


def _shard_path(cache_dir: Path, start: int) -> Path:
    return cache_dir / f"shard_{start:09d}.npz"


def load_store(cache_dir: Path, size: int) -> ProposalStore:
    """Read all shards of a complete cache into one :class:`ProposalStore`."""
    boxes, counts = [], []
    for start in range(0, size, SHARD):
        with np.load(_shard_path(cache_dir, start)) as shard:
            boxes.append(shard["boxes"])
            counts.append(shard["counts"])
    count = torch.from_numpy(np.concatenate(counts))
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), count.cumsum(0)])
    return ProposalStore(torch.from_numpy(np.concatenate(boxes)).float(), offsets)


class ProposalBoxes(Dataset[Sample]):
    """Adds ``box``: one of the image's proposals at random (the whole image if none).

    Args:
        source: the samples.
        store: cached proposals per index; None for random windows (scenes, slides), whose
            proposals are computed as each sample is read (in the loader's workers).
        settings: used when ``store`` is None.
    """

    def __init__(
        self,
        source: Dataset[Sample],
        store: ProposalStore | None,
        settings: ProposalSettings | None = None,
    ) -> None:
        self.source, self.store, self.settings = source, store, settings or ProposalSettings()
        self.in_memory = store is not None and hasattr(source, "images")
        """Cached boxes over images held in memory: the loader starts no workers."""

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.source[index])
        boxes = (
            self.store.of(index)
            if self.store is not None
            else propose(sample["image"], self.settings)
        )
        sample["box"] = random_box(boxes)
        return sample


def random_box(boxes: torch.Tensor) -> torch.Tensor:
    """One row of (K, 4) ``boxes`` at random; the whole image when K = 0."""
    if len(boxes) == 0:
        return FULL_IMAGE.clone()
    return boxes[int(torch.randint(len(boxes), ()))].clone()
