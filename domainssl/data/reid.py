"""RGB-infrared person re-identification data: SYSU-MM01, RegDB and a generic layout.

On-disk layouts of ``--data`` (as the data sets are released; neither can be bundled):

* SYSU-MM01 (Wu et al. 2017): ``cam1`` .. ``cam6``, each ``<pid:04d>/<n:04d>.jpg``; cams 3
  and 6 are infrared; ``exp/train_id.txt``, ``exp/val_id.txt``, ``exp/test_id.txt`` hold
  comma-separated identities.
  Optional ``exp/rand_perm_cam.mat``: the fixed gallery draws of the data set's evaluation
  code (:func:`read_sysu_draws`).
* RegDB (Nguyen et al. 2017): ``Visible/`` and ``Thermal/`` images listed by the split files
  ``idx/{train,test}_{visible,thermal}_<trial>.txt`` (lines ``relative/path.bmp label``).
* LLCM (Zhang & Wang 2023): training images listed by ``idx/train_vis.txt`` and
  ``idx/train_nir.txt`` (lines ``relative/path.jpg label``); test images in
  ``test_vis/cam<k>/<pid:04d>/`` and ``test_nir/cam<k>/<pid:04d>/`` of the identities in
  ``idx/test_id.txt`` (comma-separated), read as the authors' DEEN code reads them.
* Generic: ``rgb/<pid>/*.jpg`` and ``ir/<pid>/*.jpg`` (any PIL-readable image).

Samplers: :class:`ModalityPairSampler` pairs unpaired RGB and IR images (MMGL pretraining);
:class:`IdentityBalancedSampler` draws P identities x K images per modality (supervised).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from scipy.io import loadmat
from scipy.io.matlab import MatReadError
from torch.utils.data import Dataset, Sampler

from domainssl.data.samplers import EpochSampler, Shard, first_epoch
from domainssl.data.seeds import stream_seed
from domainssl.errors import DomainSSLError
from domainssl.views.modality import person_resize

RGB, IR = 0, 1
SYSU_IR_CAMS = (3, 6)
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
DATA_HELP = (
    "RGB-infrared re-ID data cannot be bundled: request SYSU-MM01, RegDB or LLCM from their "
    "authors (see README, 'RGB-infrared re-identification') and pass --data with the unpacked "
    "folder (SYSU-MM01: cam1..cam6 + exp/; RegDB: Visible/, Thermal/, idx/; LLCM: idx/, "
    "test_vis/, test_nir/ and the training images; or rgb/<id>/, ir/<id>/)."
)
Layout = Literal["sysu", "regdb", "llcm", "generic"]
SYSU_DRAWS = Path("exp") / "rand_perm_cam.mat"
"""SYSU-MM01's fixed gallery draws, where the data set's evaluation code keeps them
(``evaluation/data_split/rand_perm_cam.mat`` of github.com/wuancong/SYSU-MM01), copied into
the data folder's ``exp/``."""
LLCM_TEST_FOLDERS = {RGB: "test_vis", IR: "test_nir"}
LLCM_TEST_CAMS = {RGB: (1, 2, 3, 4, 5, 6, 7, 8, 9), IR: (1, 2, 4, 5, 6, 7, 8, 9)}
"""Cameras of LLCM's test images that DEEN's ``process_query_llcm`` /
``process_gallery_llcm`` read: visible cams 1-9, near-infrared cams 1, 2, 4-9 (no cam3)."""


@dataclass(frozen=True)
class PersonImage:
    """One image file with its identity, camera and modality (0 RGB, 1 infrared)."""

    path: Path
    pid: int
    cam: int
    modality: int


def detect_layout(root: Path) -> Layout:
    """Which of the four layouts ``root`` holds; a clear error when none."""
    if not root.is_dir():
        raise DomainSSLError(f"Re-ID data {root} is not a folder. {DATA_HELP}")
    if (root / "exp").is_dir() and all((root / f"cam{c}").is_dir() for c in range(1, 7)):
        return "sysu"
    if all((root / name).is_dir() for name in ("Visible", "Thermal", "idx")):
        return "regdb"
    if (root / "idx").is_dir() and (
        (root / "idx" / "train_vis.txt").is_file() or (root / "test_vis").is_dir()
    ):
        return "llcm"
    if (root / "rgb").is_dir() and (root / "ir").is_dir():
        return "generic"
    raise DomainSSLError(f"{root} holds no known re-ID layout. {DATA_HELP}")


def sysu_ids(root: Path, part: str) -> list[int]:
    """Identities of ``exp/<part>_id.txt`` (comma-separated)."""
    return _read_ids(root / "exp" / f"{part}_id.txt", "SYSU-MM01 ships it in exp/")


def _read_ids(path: Path, shipped: str) -> list[int]:
    if not path.is_file():
        raise DomainSSLError(f"{path} is missing: {shipped}. {DATA_HELP}")
    tokens = [token.strip() for token in path.read_text().replace("\n", ",").split(",")]
    try:
        return [int(token) for token in tokens if token]
    except ValueError:
        raise DomainSSLError(
            f"{path}: expected comma-separated identity numbers, got {path.read_text()[:80]!r}."
        ) from None


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


@dataclass(frozen=True)
class SysuDraws:
    """SYSU-MM01's fixed gallery draws (``rand_perm_cam.mat`` of its evaluation code).

    In the file, ``rand_perm_cam`` is a MATLAB cell array of the 6 cameras; camera c's cell
    holds one matrix per identity, indexed by the identity number (333 identities for cams
    1, 2, 6 and 533 for cams 3, 4, 5 in the released file); the matrix of identity p is
    (trials, images of p in camera c), row t a permutation of 1..images (MATLAB's 1-based
    indices), empty (trials x 0) where p has no image there. ``get_testing_set.m`` takes the
    first ``number_shot`` entries of row ``run_time`` as the gallery of trial ``run_time``,
    indices into the identity's images in file order (``cam<c>/<p:04d>/0001.jpg`` first).

    Attributes:
        path: the file read.
        cams: camera -> per identity (identity p at position p - 1) its (trials, images)
            matrix of 1-based indices.
        trials: rows of every non-empty matrix (10 in the released file).
    """

    path: Path
    cams: dict[int, list[np.ndarray]]
    trials: int

    def gallery(self, images: list[PersonImage], trial: int) -> list[PersonImage]:
        """The single-shot gallery of ``trial`` (0-based: MATLAB's ``run_time`` - 1) among
        ``images``: for each (identity, camera) the image the first entry of that row names,
        in (identity, camera) order."""
        if not 0 <= trial < self.trials:
            raise DomainSSLError(
                f"{self.path} holds {self.trials} trials; trial {trial + 1} was asked for: use "
                f"--trials {self.trials} or fewer, or remove the file to draw seeded galleries."
            )
        gallery = []
        for (pid, cam), group in by_identity_and_camera(images).items():
            per_identity = self.cams.get(cam, [])
            matrix = per_identity[pid - 1] if 0 < pid <= len(per_identity) else None
            width = 0 if matrix is None else matrix.shape[1]
            index = int(matrix[trial, 0]) if matrix is not None and width else 0
            if width != len(group) or not 1 <= index <= len(group):
                raise DomainSSLError(
                    f"{self.path} does not fit this copy of SYSU-MM01: cam{cam}/{pid:04d} holds "
                    f"{len(group)} images, the file a permutation of {width} (first index "
                    f"{index}). Use the data set's own evaluation/data_split/rand_perm_cam.mat "
                    "with the data set as released, or remove the file to draw seeded galleries."
                )
            gallery.append(group[index - 1])
        return gallery


def read_sysu_draws(path: Path) -> SysuDraws:
    """Read SYSU-MM01's ``rand_perm_cam.mat`` (structure: :class:`SysuDraws`); a clear error
    naming the file when it is not that file."""
    fix = (
        "use the file of the data set's evaluation code (evaluation/data_split/"
        "rand_perm_cam.mat of github.com/wuancong/SYSU-MM01), or remove it to draw seeded "
        "galleries"
    )
    try:
        content = loadmat(str(path))
    except (MatReadError, ValueError, NotImplementedError, OSError, TypeError) as err:
        raise DomainSSLError(f"{path} cannot be read as a MATLAB file ({err}): {fix}.") from None
    cells = content.get("rand_perm_cam")
    if not isinstance(cells, np.ndarray) or cells.dtype != object or cells.size != 6:
        found = ", ".join(k for k in content if not k.startswith("__")) or "nothing"
        raise DomainSSLError(
            f"{path} should hold `rand_perm_cam`, a cell array of the 6 cameras (found: "
            f"{found}): {fix}."
        )
    cams: dict[int, list[np.ndarray]] = {}
    rows: set[int] = set()
    for cam, cell in enumerate(cells.ravel(), start=1):
        if not isinstance(cell, np.ndarray) or cell.dtype != object:
            raise DomainSSLError(
                f"{path}: rand_perm_cam{{{cam}}} should be a cell array of identities: {fix}."
            )
        cams[cam] = []
        for entry in cell.ravel():
            matrix = np.asarray(entry)
            if matrix.ndim != 2 or (matrix.size and matrix.dtype.kind not in "uif"):
                raise DomainSSLError(
                    f"{path}: rand_perm_cam{{{cam}}} holds a {matrix.dtype} entry of shape "
                    f"{matrix.shape}, not a (trials x images) index matrix: {fix}."
                )
            if matrix.size:
                rows.add(matrix.shape[0])
            cams[cam].append(matrix.astype(np.int64) if matrix.size else matrix.reshape(0, 0))
    if len(rows) != 1:
        raise DomainSSLError(
            f"{path}: its matrices should all have one row per trial, found row counts "
            f"{sorted(rows) or 'none'}: {fix}."
        )
    return SysuDraws(path, cams, rows.pop())


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


def llcm_test_ids(root: Path) -> list[int]:
    """LLCM's test identities (``idx/test_id.txt``, comma-separated)."""
    return _read_ids(root / "idx" / "test_id.txt", "LLCM ships it in idx/")


def read_llcm_train(root: Path) -> list[PersonImage]:
    """LLCM's training images: ``idx/train_vis.txt`` (visible) and ``idx/train_nir.txt``
    (near-infrared), lines ``relative/path.jpg label`` as DEEN's ``LLCMData`` reads them; the
    identity is the label, the camera the ``_c<k>`` of the file name (``0001_c01_s..._vis.jpg``)
    or else a ``cam<k>`` folder of the path, 0 when neither is there."""
    images = []
    for name, modality in (("vis", RGB), ("nir", IR)):
        index = root / "idx" / f"train_{name}.txt"
        if not index.is_file():
            raise DomainSSLError(
                f"{index} is missing: LLCM ships idx/train_vis.txt and idx/train_nir.txt. "
                f"{DATA_HELP}"
            )
        for number, line in enumerate(index.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise DomainSSLError(
                    f"{index}, line {number}: expected `relative/path.jpg label`, got {line!r}."
                )
            path = root / fields[0]
            images.append(PersonImage(path, int(fields[1]), _llcm_camera(path), modality))
    return images


def _llcm_camera(path: Path) -> int:
    named = re.search(r"_c(\d+)_", path.name)
    if named:
        return int(named.group(1))
    folders = [re.fullmatch(r"cam(\d+)", part) for part in path.parts[:-1]]
    return next((int(m.group(1)) for m in reversed(folders) if m), 0)


def read_llcm_test(root: Path, modality: int) -> list[PersonImage]:
    """LLCM's test images of one modality: ``test_vis/cam<k>/<pid:04d>/*`` (visible, cams
    1-9) or ``test_nir/cam<k>/<pid:04d>/*`` (near-infrared, cams 1, 2, 4-9) of the
    identities in ``idx/test_id.txt``, in DEEN's order (identity, then camera, then file)."""
    folder = LLCM_TEST_FOLDERS[modality]
    images = [
        PersonImage(path, pid, cam, modality)
        for pid in sorted(llcm_test_ids(root))
        for cam in LLCM_TEST_CAMS[modality]
        if (root / folder / f"cam{cam}" / f"{pid:04d}").is_dir()
        for path in _image_files(root / folder / f"cam{cam}" / f"{pid:04d}")
    ]
    if not images:
        raise DomainSSLError(
            f"{root / folder} holds no image of the identities in idx/test_id.txt "
            f"(expected {folder}/cam<k>/<id:04d>/*.jpg, as LLCM is released)."
        )
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
    """The training part: SYSU-MM01 train + val ids, RegDB split 1 train, LLCM's training
    lists, generic: all."""
    layout = detect_layout(root)
    if layout == "sysu":
        ids = sysu_ids(root, "train")
        if (root / "exp" / "val_id.txt").is_file():
            ids += sysu_ids(root, "val")
        images = read_sysu(root, ids)
    elif layout == "llcm":
        images = read_llcm_train(root)
    else:
        images = read_regdb(root, "train") if layout == "regdb" else read_generic(root)
    if {im.modality for im in images} != {RGB, IR}:
        raise DomainSSLError(f"{root}: the training part needs RGB and infrared images.")
    return images


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


def by_identity_and_camera(images: list[PersonImage]) -> dict[tuple[int, int], list[PersonImage]]:
    """``images`` grouped by (identity, camera), in (identity, camera) order, each group in
    file-name order (the order the data sets' evaluation code indexes them in)."""
    groups: dict[tuple[int, int], list[PersonImage]] = {}
    for item in images:
        groups.setdefault((item.pid, item.cam), []).append(item)
    return {key: sorted(groups[key], key=lambda item: item.path) for key in sorted(groups)}


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
