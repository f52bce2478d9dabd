"""Segmentation data: ``images/`` + ``masks/`` folders matched by file stem, and splits."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from torch.utils.data import Dataset

from domainssl.data.imageio import IMAGE_SUFFIXES, PIL_SUFFIXES, TIFF_SUFFIXES, read_image
from domainssl.errors import DomainSSLError

Sample = dict[str, Any]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SegmentationPair:
    """An image file and the mask file of the same stem."""

    image: Path
    mask: Path


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` keyed by stem; two files of one stem are an error."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise DomainSSLError(
                f"{by_stem[path.stem]} and {path} share a stem: keep one file per name."
            )
        by_stem[path.stem] = path
    return by_stem


def find_pairs(folder: Path) -> list[SegmentationPair]:
    """Pairs of ``folder/images/<stem>.*`` and ``folder/masks/<stem>.*``, sorted by stem."""
    for sub in ("images", "masks"):
        if not (folder / sub).is_dir():
            raise DomainSSLError(
                f"{folder / sub} does not exist: a segmentation folder holds images/ and masks/ "
                "(one mask per image, same file stem)."
            )
    images, masks = _files_by_stem(folder / "images"), _files_by_stem(folder / "masks")
    if not images:
        raise DomainSSLError(f"{folder / 'images'} holds no images ({sorted(IMAGE_SUFFIXES)}).")
    unmatched = sorted(stem for stem in images if stem not in masks)
    if unmatched:
        raise DomainSSLError(
            f"{len(unmatched)} image(s) in {folder / 'images'} have no mask in "
            f"{folder / 'masks'}: {', '.join(unmatched[:10])}. Add masks with the same stem "
            "or remove those images."
        )
    return [SegmentationPair(images[stem], masks[stem]) for stem in sorted(images)]


def _read_mask_bands(path: Path) -> tuple[np.ndarray, float | None]:
    """Mask pixels (C, H, W) and the GeoTIFF nodata value; palette and 1-bit PNGs keep their
    indices (``read_image`` would turn them into RGB)."""
    if path.suffix.lower() in PIL_SUFFIXES:
        with Image.open(path) as image:
            if image.mode in ("P", "1"):
                return np.asarray(image).astype(np.uint8)[None], None
    nodata = None
    if path.suffix.lower() in TIFF_SUFFIXES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                nodata = src.nodata
    return read_image(path).array, nodata


def read_pair(pair: SegmentationPair, in_chans: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated image (C, H, W) float32, raw mask values (H, W) int64 and nodata (H, W) bool."""
    image = read_image(pair.image).array
    if image.shape[0] != in_chans:
        raise DomainSSLError(
            f"{pair.image} has {image.shape[0]} bands, the backbone expects {in_chans}: use "
            "images with the bands the backbone was pretrained on."
        )
    bands, nodata_value = _read_mask_bands(pair.mask)
    if bands.shape[0] != 1:
        raise DomainSSLError(
            f"{pair.mask} has {bands.shape[0]} bands: a mask is one band of class indices "
            "(save it as a single-band GeoTIFF, grayscale or palette PNG)."
        )
    if bands.shape[1:] != image.shape[1:]:
        raise DomainSSLError(
            f"{pair.mask} is {bands.shape[2]}x{bands.shape[1]} px but {pair.image} is "
            f"{image.shape[2]}x{image.shape[1]}: a mask must cover its image pixel for pixel."
        )
    raw = bands[0]  # (H, W)
    nodata = np.isnan(raw) if nodata_value is None else (raw == nodata_value) | np.isnan(raw)
    if not np.array_equal(raw[~nodata], np.round(raw[~nodata])):
        raise DomainSSLError(f"{pair.mask} holds non-integer values: store class indices.")
    return image.astype(np.float32), np.where(nodata, 0, raw).astype(np.int64), nodata


@dataclass(frozen=True)
class LabelEncoding:
    """How raw mask values become classes, for a whole data set."""

    num_classes: int
    ignore_index: int
    binary_255: bool
    """Masks hold only 0 and 255: read as classes 0 and 1 (255 is then not ignored)."""

    def encode(self, raw: np.ndarray, nodata: np.ndarray) -> np.ndarray:
        """Classes (H, W) int64 from raw values; nodata pixels become ``ignore_index``."""
        labels = raw // 255 if self.binary_255 else raw
        return np.where(nodata, self.ignore_index, labels)


def scan_labels(pairs: list[SegmentationPair], in_chans: int, ignore_index: int) -> LabelEncoding:
    """Read and validate every pair once; infer the class count and the 0/255 binary case."""
    values: set[int] = set()
    for pair in pairs:
        _, raw, nodata = read_pair(pair, in_chans)
        found = {int(v) for v in np.unique(raw[~nodata])}
        if any(v < 0 and v != ignore_index for v in found):
            raise DomainSSLError(f"{pair.mask} holds negative values: classes are 0, 1, 2, ...")
        values |= found
    if values == {0, 255}:
        return LabelEncoding(2, ignore_index, binary_255=True)
    classes = values - {ignore_index}
    if not classes:
        raise DomainSSLError(f"The masks of {pairs[0].mask.parent} hold no labelled pixel.")
    return LabelEncoding(max(classes) + 1, ignore_index, binary_255=False)


class SegmentationSet(Dataset[Sample]):
    """Whole images and class masks: ``{"image": (C, H, W) float, "mask": (H, W) long}``."""

    def __init__(
        self, pairs: list[SegmentationPair], in_chans: int, encoding: LabelEncoding
    ) -> None:
        self.pairs, self.in_chans, self.encoding = pairs, in_chans, encoding

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image, raw, nodata = read_pair(self.pairs[index], self.in_chans)
        mask = self.encoding.encode(raw, nodata)
        path = str(self.pairs[index].image)
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "path": path}


@dataclass
class PairSplit:
    """Image/mask pairs of each split."""

    train: list[SegmentationPair]
    val: list[SegmentationPair]
    test: list[SegmentationPair]


def split_pairs(
    pairs: list[SegmentationPair], val: float = 0.1, test: float = 0.2, seed: int = 0
) -> PairSplit:
    """Seeded split by image: shares ``val`` and ``test`` (each at least one image if > 0)."""
    n_test = max(1, round(len(pairs) * test)) if test > 0 else 0
    n_val = max(1, round(len(pairs) * val)) if val > 0 else 0
    if n_test + n_val >= len(pairs):
        raise DomainSSLError(
            f"{len(pairs)} image(s) in {pairs[0].image.parent} are too few to split into train, "
            "val and test: add images, or give the splits as train/, val/ and test/ subfolders."
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    chosen = [
        [pairs[i] for i in sorted(part)] for part in np.split(order, [n_test, n_test + n_val])
    ]
    return PairSplit(train=chosen[2], val=chosen[1], test=chosen[0])


@dataclass
class SegmentationData:
    """The three splits, sharing one label encoding."""

    train: SegmentationSet
    val: SegmentationSet
    test: SegmentationSet
    encoding: LabelEncoding


def load_segmentation_data(
    root: Path,
    in_chans: int,
    ignore_index: int = 255,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
) -> SegmentationData:
    """Train / val / test sets from ``root``, validated before any training starts.

    ``root/train/`` (+ optional ``val/``, ``test/``, each with images/ + masks/) is used as
    given, a missing split being carved from train; otherwise ``root/images`` + ``root/masks``
    are split by image with ``seed``.
    """
    if not root.is_dir():
        raise DomainSSLError(f"Data path {root} does not exist: check --data.")
    if (root / "train").is_dir():
        given = {name: find_pairs(root / name) for name in SPLITS if (root / name).is_dir()}
        carved = split_pairs(
            given["train"], 0.0 if "val" in given else val, 0.0 if "test" in given else test, seed
        )
        split = PairSplit(
            carved.train, given.get("val", carved.val), given.get("test", carved.test)
        )
    else:
        split = split_pairs(find_pairs(root), val, test, seed)
    encoding = scan_labels(split.train + split.val + split.test, in_chans, ignore_index)
    sets = [
        SegmentationSet(part, in_chans, encoding) for part in (split.train, split.val, split.test)
    ]
    return SegmentationData(train=sets[0], val=sets[1], test=sets[2], encoding=encoding)
