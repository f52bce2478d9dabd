"""A folder of image chips, one sample per file, class subfolders optional."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from domainssl.data.imageio import IMAGE_SUFFIXES, read_image
from domainssl.errors import DomainSSLError, SkippedInputsWarning

Sample = dict[str, Any]


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (sorted, symlinked folders not followed)."""
    if not root.exists():
        raise DomainSSLError(f"Data path {root} does not exist: check --data.")
    files = [
        Path(folder) / name
        for folder, _, names in os.walk(root)
        for name in names
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DomainSSLError(
            f"Data folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "point --data at a folder of chips or a GeoTIFF scene."
        )
    return sorted(files)


def readable_images(files: list[Path], strict: bool = False) -> tuple[list[Path], list[str]]:
    """Files that decode, and one line per file that does not (a warning lists them).

    With ``strict`` the first bad file is an error; without, bad files are skipped and
    only a folder with no readable file is an error.
    """
    good, skipped = [], []
    for path in files:
        try:
            read_image(path)
        except DomainSSLError as err:
            if strict:
                raise
            skipped.append(str(err))
            continue
        good.append(path)
    if not good:
        raise DomainSSLError(f"No readable image among {len(files)} files: {skipped[0]}")
    if skipped:
        warnings.warn(
            f"{len(skipped)} of {len(files)} images skipped (data.strict=true or --strict "
            "makes this an error):\n  " + "\n  ".join(skipped),
            SkippedInputsWarning,
            stacklevel=2,
        )
    return good, skipped


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 stays uint8 (4x less memory); every other dtype becomes float32."""
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    return torch.from_numpy(array.astype(np.float32))


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (C, H, W) image to ``size`` x ``size`` (antialiased), keeping uint8 uint8."""
    if image.shape[-2:] == (size, size):
        return image
    resized = F.interpolate(
        image[None].float(), size=(size, size), mode="bilinear", antialias=True
    )[0]
    if image.dtype == torch.uint8:
        return resized.round().clamp(0, 255).to(torch.uint8)
    return resized


class ChipFolder(Dataset[Sample]):
    """Chips in ``root`` or ``root/<class>/``; labels (class folders) are for evaluation only.

    Args:
        root: folder of GeoTIFF / JPEG / PNG chips.
        size: every chip is resized to ``size`` x ``size``.
        in_chans: expected band count (None: that of the first file).
    """

    def __init__(
        self, root: Path, size: int, in_chans: int | None = None, strict: bool = False
    ) -> None:
        self.root = root
        self.files, self.skipped = readable_images(list_images(root), strict)
        self.size = size
        relative = [f.relative_to(root) for f in self.files]
        self.classes = sorted({r.parts[0] for r in relative if len(r.parts) > 1})
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = [index[r.parts[0]] if len(r.parts) > 1 else -1 for r in relative]
        first = read_image(self.files[0])
        self.band_names = first.band_names
        self.in_chans = first.array.shape[0]
        if in_chans is not None and in_chans != self.in_chans:
            raise DomainSSLError(
                f"{self.files[0]} has {self.in_chans} bands but the config expects "
                f"data.in_chans={in_chans}: use data of that band count or set data.in_chans."
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        array = read_image(path).array
        if array.shape[0] != self.in_chans:
            raise DomainSSLError(
                f"{path} has {array.shape[0]} bands, the other chips {self.in_chans}: "
                "all chips of a folder need the same bands."
            )
        image = resize(to_tensor(array), self.size)
        return {"image": image, "label": self.labels[index], "path": str(path)}


class InMemoryChips(Dataset[Sample]):
    """All chips of a dataset decoded once into one tensor (decoding runs in workers)."""

    def __init__(self, source: ChipFolder, num_workers: int = 0) -> None:
        loader = DataLoader(source, batch_size=64, num_workers=num_workers)
        images, labels = [], []
        for batch in loader:
            images.append(batch["image"])
            labels.append(batch["label"])
        self.images = torch.cat(images)  # (N, C, S, S)
        self.labels = torch.cat(labels)
        self.files = source.files

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return {"image": self.images[index], "label": int(self.labels[index])}


ImageTransform = Callable[[torch.Tensor], torch.Tensor]
"""A deterministic per-image preprocessing step on a (B, C, H, W) batch."""


class TransformedImages(Dataset[Sample]):
    """Applies an :data:`ImageTransform` to each sample's image as it is read."""

    def __init__(self, source: Dataset[Sample], transform: ImageTransform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.source[index])
        sample["image"] = self.transform(sample["image"][None])[0]
        return sample


def apply_transform(dataset: Dataset[Sample], transform: ImageTransform) -> Dataset[Sample]:
    """In-memory chips are transformed once (kept uint8 when they were); others on read."""
    if not isinstance(dataset, InMemoryChips):
        return TransformedImages(dataset, transform)
    images = dataset.images
    chunks = [transform(images[i : i + 256]) for i in range(0, len(images), 256)]
    transformed = torch.cat(chunks)
    if images.dtype == torch.uint8:
        transformed = transformed.round().clamp(0, 255).to(torch.uint8)
    dataset.images = transformed
    return dataset
