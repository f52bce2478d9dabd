"""Labeled image sets (transfer, the online kNN monitor): class folders or a CSV, splits.

Layouts of a labeled set:

* ``DIR/<class>/*.tif``: one class per folder; a stratified 70/10/20 split (fixed seed).
* ``labels.csv``: rows ``path,label`` (paths relative to the CSV; header optional); several
  labels per image separated by ``;`` make a multi-label set.
* ``DIR/train/``, ``DIR/test/`` and optionally ``DIR/val/``, each in one of the layouts
  above (``train.csv`` / ``test.csv`` / ``val.csv`` work too): used as given.

:func:`read_labeled_index` reads labels and the split without pixels, so that a caller can
keep a subset before :func:`read_images`; :func:`load_labeled` reads both.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

from domainssl.data.folder import ChipFolder, Sample, resize, to_tensor
from domainssl.data.imageio import read_image
from domainssl.errors import DomainSSLError

PARTS = ("train", "val", "test")


@dataclass
class ProbeSplit:
    """Fixed stratified train / validation / test indices."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def stratified_split(
    labels: np.ndarray, test: float = 0.2, val: float = 0.1, seed: int = 0
) -> ProbeSplit:
    """Test share first, then a validation share of the rest, stratified, fixed seed; each
    part gets at least one image per class."""
    indices = np.arange(len(labels))
    classes = len(np.unique(labels))
    n_test = max(math.ceil(test * len(labels)), classes)  # ceil: as sklearn rounds shares
    rest, test_idx = train_test_split(indices, test_size=n_test, stratify=labels, random_state=seed)
    n_val = max(math.ceil(val / (1 - test) * len(rest)), classes)
    train_idx, val_idx = train_test_split(
        rest, test_size=n_val, stratify=labels[rest], random_state=seed
    )
    return ProbeSplit(np.sort(train_idx), np.sort(val_idx), np.sort(test_idx))


@dataclass
class LabeledIndex:
    """The files of a labeled set with their targets and split, no pixels yet."""

    files: list[Path]
    targets: torch.Tensor  # (N,) class index, or (N, K) 0/1 for multi-label
    classes: list[str]
    split: ProbeSplit
    split_given: bool
    """True when the split came from train/val/test folders, False when it was seeded."""


@dataclass
class LabeledSet:
    """Images (raw pixels) with targets and a train/val/test split."""

    images: torch.Tensor  # (N, C, S, S)
    targets: torch.Tensor  # (N,) class index, or (N, K) 0/1 for multi-label
    files: list[str]
    classes: list[str]
    split: ProbeSplit
    split_given: bool
    """True when the split came from train/val/test folders, False when it was seeded."""

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2


@dataclass
class _Part:
    files: list[Path]
    labels: list[list[str]]


def load_labeled(path: Path, size: int, in_chans: int, seed: int = 0) -> LabeledSet:
    """Read a labeled set (see the module doc) resized to ``size``, checking the band count."""
    index = read_labeled_index(path, seed)
    images = read_images(index.files, size, in_chans)
    files = [str(f) for f in index.files]
    return LabeledSet(images, index.targets, files, index.classes, index.split, index.split_given)


def read_labeled_index(path: Path, seed: int = 0) -> LabeledIndex:
    """Files, targets, classes and split of a labeled set (see the module doc)."""
    if not path.exists():
        raise DomainSSLError(f"Labeled data {path} does not exist: check --data.")
    given = {p: _find_part(path, p) for p in PARTS}
    if given["train"] is None or given["test"] is None:
        parts = {"all": _read_part(path)}
    else:
        parts = {name: _read_part(found) for name, found in given.items() if found is not None}
    known = parts.get("train", parts.get("all"))
    assert known is not None
    train_labels = {c for labels in known.labels for c in labels}
    if "train" in parts:
        for name, part in parts.items():
            for file, names in zip(part.files, part.labels, strict=True):
                if unknown := set(names) - train_labels:
                    raise DomainSSLError(
                        f"{file} ({name}) has class {sorted(unknown)} that no training image "
                        "has: add training images of it or drop it from the evaluation set."
                    )
    classes = sorted(train_labels)
    files = [f for part in parts.values() for f in part.files]
    labels = [lab for part in parts.values() for lab in part.labels]
    targets = _targets(labels, classes)
    given_split = "all" not in parts
    split = _given_split(parts, targets, seed) if given_split else _seeded_split(targets, seed)
    return LabeledIndex(files, targets, classes, split, given_split)


def _find_part(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.csv"):
        if root.is_dir() and candidate.exists():
            return candidate
    return None


def _read_part(path: Path) -> _Part:
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    folder = ChipFolder(path, size=1)
    if not folder.classes or min(folder.labels) < 0:
        raise DomainSSLError(
            f"{path} needs one subfolder per class (or a CSV of path,label): some images "
            "there have no class folder."
        )
    return _Part(folder.files, [[folder.classes[i]] for i in folder.labels])


def _read_csv(path: Path) -> _Part:
    files, labels = [], []
    with path.open(newline="") as file:
        for line, row in enumerate(csv.reader(file), start=1):
            if not row or (line == 1 and row[0].strip().lower() == "path"):
                continue
            names = [n.strip() for n in ";".join(row[1:]).split(";") if n.strip()]
            if not names:
                raise DomainSSLError(f"{path} line {line}: no label after the path {row[0]!r}.")
            image = (path.parent / row[0].strip()).resolve()
            if not image.is_file():
                raise DomainSSLError(f"{path} line {line}: image {image} does not exist.")
            files.append(image)
            labels.append(names)
    if not files:
        raise DomainSSLError(f"{path} lists no images: expected rows of path,label.")
    return _Part(files, labels)


class _Images(Dataset[Sample]):
    def __init__(self, files: list[Path], size: int, in_chans: int) -> None:
        self.files, self.size, self.in_chans = files, size, in_chans

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        array = read_image(self.files[index]).array
        if array.shape[0] != self.in_chans:
            raise DomainSSLError(
                f"{self.files[index]} has {array.shape[0]} bands but the backbone was "
                f"pretrained on {self.in_chans}: give images with the pretraining bands, in "
                "the same order."
            )
        return {"image": resize(to_tensor(array), self.size)}


def read_images(files: list[Path], size: int, in_chans: int) -> torch.Tensor:
    """Raw pixels (N, C, size, size) of ``files``; a file with another band count is an error."""
    loader = DataLoader(_Images(files, size, in_chans), batch_size=64, num_workers=0)
    return torch.cat([batch["image"] for batch in loader])


def _targets(labels: list[list[str]], classes: list[str]) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    if all(len(lab) == 1 for lab in labels):
        return torch.tensor([index[lab[0]] for lab in labels])
    multi = torch.zeros(len(labels), len(classes))
    for row, names in enumerate(labels):
        multi[row, [index[n] for n in names]] = 1.0
    return multi


def stratify_key(targets: torch.Tensor) -> np.ndarray:
    """Class index, or for multi-label the most frequent label of each image."""
    if targets.ndim == 1:
        return targets.numpy()
    return (targets * targets.sum(0)).argmax(1).numpy()


def _seeded_split(targets: torch.Tensor, seed: int) -> ProbeSplit:
    key = stratify_key(targets)
    if np.bincount(key).min() < 3:
        raise DomainSSLError(
            "Some class has fewer than 3 images: too few for a train/val/test split. Add "
            "images or give train/ and test/ folders."
        )
    return stratified_split(key, seed=seed)


def _given_split(parts: dict[str, _Part], targets: torch.Tensor, seed: int) -> ProbeSplit:
    bounds, start = {}, 0
    for name, part in parts.items():
        bounds[name] = np.arange(start, start + len(part.files))
        start += len(part.files)
    train = bounds["train"]
    if "val" in bounds:
        return ProbeSplit(train, bounds["val"], bounds["test"])
    key = stratify_key(targets[train])
    counts = np.bincount(key)
    val_size = max(round(0.1 * len(train)), 1)
    stratified = counts[counts > 0].min() >= 2 and val_size >= (counts > 0).sum()
    kept, val = train_test_split(
        train, test_size=val_size, stratify=key if stratified else None, random_state=seed
    )
    return ProbeSplit(np.sort(kept), np.sort(val), bounds["test"])
