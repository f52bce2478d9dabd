"""ORL's cross-image object pairs on disk and the stage-3 samples that carry them.

A pair is (image, box, neighbour image, neighbour box, similarity), boxes normalized to
[0, 1]. Stage 2 writes pairs in chunk files ``pairs/chunk_<first query>.npz``; a finished
chunk is never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from domainssl.data.folder import InMemoryChips, Sample
from domainssl.data.proposal_cache import ProposalBoxes, random_box
from domainssl.io import atomic_write

PAIR_FIELDS = ("image", "neighbor", "box", "neighbor_box", "similarity")


@dataclass
class ObjectPairs:
    """Mined pairs, sorted by ``image``."""

    image: np.ndarray  # (P,) int64
    neighbor: np.ndarray  # (P,) int64
    box: np.ndarray  # (P, 4) float32
    neighbor_box: np.ndarray  # (P, 4) float32
    similarity: np.ndarray  # (P,) float32

    def __len__(self) -> int:
        return len(self.image)

    def rows_of(self, index: int) -> tuple[int, int]:
        """[start, end) rows of the pairs of image ``index``."""
        start, end = np.searchsorted(self.image, [index, index + 1])
        return int(start), int(end)


def empty_pairs() -> dict[str, np.ndarray]:
    """Arrays of zero pairs, named as :data:`PAIR_FIELDS`."""
    boxes = np.zeros((0, 4), np.float32)
    return {"image": np.zeros(0, np.int64), "neighbor": np.zeros(0, np.int64), "box": boxes,
            "neighbor_box": boxes, "similarity": np.zeros(0, np.float32)}  # fmt: skip


def save_chunk(path: Path, pairs: dict[str, np.ndarray]) -> None:
    """Write one chunk of pairs (arrays named as :data:`PAIR_FIELDS`) atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as file:
            np.savez(file, *[pairs[name] for name in PAIR_FIELDS])

    atomic_write(path, write)


def load_pairs(folder: Path) -> ObjectPairs:
    """All chunks of ``folder`` as one :class:`ObjectPairs` (empty when there are none)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in PAIR_FIELDS}
    for chunk in sorted(folder.glob("chunk_*.npz")):
        with np.load(chunk) as data:
            for position, name in enumerate(PAIR_FIELDS):
                parts[name].append(data[f"arr_{position}"])
    if not parts["image"]:
        return ObjectPairs(**empty_pairs())
    merged = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    order = np.argsort(merged["image"], kind="stable")
    return ObjectPairs(**{name: array[order] for name, array in merged.items()})


class FixedImages(Dataset[Sample]):
    """A fixed (N, C, H, W) tensor of images as samples (one draw of random windows)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return {"image": self.images[index], "label": -1}


class PairedSamples(Dataset[Sample]):
    """Stage-3 samples: the image, a proposal ``box`` (the intra-image RoI), and one mined
    pair: ``pair_box`` in the image, ``neighbor`` image and ``neighbor_box`` in it.

    Images without mined pairs get ``has_pair`` False (their inter-image loss is skipped).
    """

    def __init__(self, source: ProposalBoxes, pairs: ObjectPairs) -> None:
        self.source, self.pairs = source, pairs
        self.in_memory = source.in_memory

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        start, end = self.pairs.rows_of(index)
        if end > start:
            row = int(torch.randint(start, end, ()))
            neighbor = int(self.pairs.neighbor[row])
            sample["neighbor"] = self._image(neighbor)
            sample["pair_box"] = torch.from_numpy(self.pairs.box[row]).float()
            sample["neighbor_box"] = torch.from_numpy(self.pairs.neighbor_box[row]).float()
        else:
            sample["neighbor"] = sample["image"]
            sample["pair_box"] = sample["neighbor_box"] = random_box(torch.zeros(0, 4))
        sample["has_pair"] = end > start
        return sample

    def _image(self, index: int) -> torch.Tensor:
        inner = self.source.source
        if isinstance(inner, InMemoryChips | FixedImages):
            return inner.images[index]
        return inner[index]["image"]
