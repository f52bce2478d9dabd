"""RGB-infrared person re-identification data: SYSU-MM01, RegDB and a generic layout.

On-disk layouts of ``--data`` (as the data sets are released; neither can be bundled):

* SYSU-MM01 (Wu et al. 2017): ``cam1`` .. ``cam6``, each ``<pid:04d>/<n:04d>.jpg``; cams 3
  and 6 are infrared; ``exp/train_id.txt``, ``exp/val_id.txt``, ``exp/test_id.txt`` hold
  comma-separated identities.
* RegDB (Nguyen et al. 2017): ``Visible/`` and ``Thermal/`` images listed by the split files
  ``idx/{train,test}_{visible,thermal}_<trial>.txt`` (lines ``relative/path.bmp label``).
* Generic: ``rgb/<pid>/*.jpg`` and ``ir/<pid>/*.jpg`` (any PIL-readable image).

Samplers: :class:`ModalityPairSampler` pairs unpaired RGB and IR images (MMGL pretraining);
:class:`IdentityBalancedSampler` draws P identities x K images per modality (supervised).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from domainssl.data.samplers import EpochSampler, Shard, first_epoch, stream_seed
from domainssl.errors import DomainSSLError
from domainssl.views.modality import person_resize

RGB, IR = 0, 1
SYSU_IR_CAMS = (3, 6)
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
DATA_HELP = (
    "RGB-infrared re-ID data cannot be bundled: request SYSU-MM01 or RegDB from their authors "
    "(see README, 'RGB-infrared re-identification') and pass --data with the unpacked folder "
    "(SYSU-MM01: cam1..cam6 + exp/; RegDB: Visible/, Thermal/, idx/; or rgb/<id>/, ir/<id>/)."
)
Layout = Literal["sysu", "regdb", "generic"]


@dataclass(frozen=True)
class PersonImage:
    """One image file with its identity, camera and modality (0 RGB, 1 infrared)."""

    path: Path
    pid: int
    cam: int
    modality: int


def detect_layout(root: Path) -> Layout:
    """Which of the three layouts ``root`` holds; a clear error when none."""
    if not root.is_dir():
        raise DomainSSLError(f"Re-ID data {root} is not a folder. {DATA_HELP}")
    if (root / "exp").is_dir() and all((root / f"cam{c}").is_dir() for c in range(1, 7)):
        return "sysu"
    if all((root / name).is_dir() for name in ("Visible", "Thermal", "idx")):
        return "regdb"
    if (root / "rgb").is_dir() and (root / "ir").is_dir():
        return "generic"
    raise DomainSSLError(f"{root} holds no known re-ID layout. {DATA_HELP}")


def sysu_ids(root: Path, part: str) -> list[int]:
    """Identities of ``exp/<part>_id.txt`` (comma-separated)."""
    path = root / "exp" / f"{part}_id.txt"
    if not path.is_file():
        raise DomainSSLError(f"{path} is missing: SYSU-MM01 ships it in exp/. {DATA_HELP}")
    text = path.read_text().replace("\n", ",")
    return [int(token) for token in text.split(",") if token.strip()]


def read_sysu(root: Path, ids: list[int], cams: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> list:
    """Images of identities ``ids`` from cameras ``cams`` (missing folders are skipped)."""
    images = []
    for cam in cams:
        modality = IR if cam in SYSU_IR_CAMS else RGB
        for pid in ids:
            folder = root / f"cam{cam}" / f"{pid:04d}"
            if folder.is_dir():
                images += [PersonImage(p, pid, cam, modality) for p in _image_files(folder)]
    return images


def read_regdb(root: Path, part: Literal["train", "test"], trial: int = 1) -> list[PersonImage]:
    """Visible (camera 1) and thermal (camera 2) images of split ``trial`` (1-10)."""
    images = []
    for name, modality in (("visible", RGB), ("thermal", IR)):
        index = root / "idx" / f"{part}_{name}_{trial}.txt"
        if not index.is_file():
            raise DomainSSLError(f"{index} is missing: RegDB ships the idx/ split files.")
        for line in index.read_text().splitlines():
            if line.strip():
                relative, label = line.split()
                images.append(PersonImage(root / relative, int(label), modality + 1, modality))
    return images


def read_generic(root: Path) -> list[PersonImage]:
    """``rgb/<pid>/*`` (camera 1) and ``ir/<pid>/*`` (camera 2); folder names are identities."""
    names = sorted({p.name for m in ("rgb", "ir") for p in (root / m).iterdir() if p.is_dir()})
    pids = {name: i for i, name in enumerate(names)}
    return [
        PersonImage(path, pids[folder.name], modality + 1, modality)
        for modality, sub in ((RGB, "rgb"), (IR, "ir"))
        for folder in sorted(p for p in (root / sub).iterdir() if p.is_dir())
        for path in _image_files(folder)
    ]


def training_images(root: Path) -> list[PersonImage]:
    """The training part: SYSU-MM01 train + val ids, RegDB split 1 train, generic: all."""
    layout = detect_layout(root)
    if layout == "sysu":
        ids = sysu_ids(root, "train")
        if (root / "exp" / "val_id.txt").is_file():
            ids += sysu_ids(root, "val")
        images = read_sysu(root, ids)
    else:
        images = read_regdb(root, "train") if layout == "regdb" else read_generic(root)
    if {im.modality for im in images} != {RGB, IR}:
        raise DomainSSLError(f"{root}: the training part needs RGB and infrared images.")
    return images


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


def read_person(path: Path) -> torch.Tensor:
    """An image file as uint8 (3, H, W); one-channel (infrared) images are repeated to 3."""
    try:
        with Image.open(path) as opened:
            one_channel = len(opened.getbands()) == 1
            array = np.asarray(opened.convert("L" if one_channel else "RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise DomainSSLError(f"{path}: cannot read this image ({err}).") from None
    if one_channel:  # (H, W) -> (3, H, W)
        return torch.from_numpy(array.copy())[None].repeat(3, 1, 1)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class PersonImages(Dataset[dict[str, Any]]):
    """Person images resized to ``size`` = (height, width), with identity and modality."""

    def __init__(self, images: list[PersonImage], size: tuple[int, int]) -> None:
        if not images:
            raise DomainSSLError(f"No re-ID images found. {DATA_HELP}")
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        image = person_resize(read_person(item.path)[None], self.size)[0]  # (3, H, W)
        return {
            "image": image,
            "pid": item.pid,
            "cam": item.cam,
            "modality": item.modality,
            "path": str(item.path),
        }


class ModalityPairs(Dataset[dict[str, Any]]):
    """Indexed by (rgb index, ir index) pairs of a :class:`PersonImages` set."""

    def __init__(self, images: PersonImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, pair: tuple[int, int]) -> dict[str, Any]:
        rgb, ir = (self.images[i] for i in pair)
        return {"rgb": rgb["image"], "ir": ir["image"], "rgb_pid": rgb["pid"], "ir_pid": ir["pid"]}


class ModalityPairSampler(EpochSampler[tuple[int, int]]):
    """Unpaired (RGB, IR) index pairs: independent random orders of both modalities, drawn
    from ``(seed, epoch)`` and shared out among the processes.

    An epoch has as many pairs as the larger modality has images; the smaller one is
    cycled through fresh random orders. Labels are never used.
    """

    def __init__(
        self,
        modalities: list[int],
        seed: int = 0,
        epoch_of: Callable[[], int] = first_epoch,
        shard: Shard = Shard(),
    ) -> None:
        super().__init__(seed, epoch_of, shard)
        flags = np.asarray(modalities)
        self.rgb, self.ir = np.flatnonzero(flags == RGB), np.flatnonzero(flags == IR)
        if not len(self.rgb) or not len(self.ir):
            raise DomainSSLError("Pairing RGB and infrared images needs both modalities.")

    @property
    def pairs_per_epoch(self) -> int:
        return max(len(self.rgb), len(self.ir))

    def __len__(self) -> int:
        return self.pairs_per_epoch // self.shard.world

    def _order(self, indices: np.ndarray, generator: torch.Generator) -> list[int]:
        rounds = -(-self.pairs_per_epoch // len(indices))
        orders = [indices[torch.randperm(len(indices), generator=generator).numpy()]
                  for _ in range(rounds)]  # fmt: skip
        return np.concatenate(orders)[: self.pairs_per_epoch].tolist()

    def items(self, epoch: int) -> list[tuple[int, int]]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
        rgb = self._order(self.rgb, generator)
        return self.share(list(zip(rgb, self._order(self.ir, generator), strict=True)))


class IdentityBalancedSampler(Sampler[list[int]]):
    """Batches of P identities x K images of each modality (2PK indices, RGB then IR).

    Only identities with images in both modalities are drawn; an identity with fewer
    than K images of a modality repeats some.
    """

    def __init__(self, images: list[PersonImage], p: int, k: int, seed: int = 0) -> None:
        by_key: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(images):
            by_key.setdefault((item.pid, item.modality), []).append(index)
        self.pools = {pid: (by_key[(pid, RGB)], by_key[(pid, IR)])
                      for pid in sorted({pid for pid, _ in by_key})
                      if (pid, RGB) in by_key and (pid, IR) in by_key}  # fmt: skip
        if len(self.pools) < p:
            raise DomainSSLError(
                f"{len(self.pools)} identities have both modalities, fewer than P = {p}."
            )
        self.p, self.k = p, k
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.pools) // self.p

    def _take(self, pool: list[int]) -> list[int]:
        return self.rng.choice(pool, self.k, replace=len(pool) < self.k).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        pids = self.rng.permutation(list(self.pools))
        for start in range(0, len(self) * self.p, self.p):
            chosen = [self.pools[int(pid)] for pid in pids[start : start + self.p]]
            yield [i for rgb, _ in chosen for i in self._take(rgb)] + [
                i for _, ir in chosen for i in self._take(ir)
            ]
