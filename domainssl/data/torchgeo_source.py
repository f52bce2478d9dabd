"""torchgeo data sets as pretraining input: ``--data torchgeo:<Class>:<root>``.

A ``RasterDataset`` subclass (Sentinel2, Landsat8, ...) is read as random windows drawn by
torchgeo's :class:`~torchgeo.samplers.RandomGeoSampler`; a ``NonGeoDataset`` (EuroSAT,
BigEarthNet, SSL4EOS12, ...) gives its ``image`` tensors as chips. torchgeo is imported
only when such a source is used (it takes seconds).
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioIOError
from torch.utils.data import Dataset

from domainssl.config import DataConfig
from domainssl.data.eo import MAX_DRAWS, SceneWindows
from domainssl.data.folder import Sample, resize
from domainssl.data.imageio import band_names_of
from domainssl.data.seeds import draw_generator
from domainssl.errors import DomainSSLError

if TYPE_CHECKING:
    from torchgeo.datasets import NonGeoDataset, RasterDataset

PREFIX = "torchgeo:"
EXAMPLES = ["Sentinel2", "Landsat8", "RasterDataset", "EuroSAT", "BigEarthNet", "SSL4EOS12"]


def is_torchgeo_spec(path: str | Path) -> bool:
    """Whether ``--data`` names a torchgeo data set (``torchgeo:<Class>:<root>``)."""
    return str(path).startswith(PREFIX)


def parse_spec(spec: str) -> tuple[type[Any], Path]:
    """The torchgeo data set class (raster or non-geo) and the root folder of ``spec``."""
    from torchgeo import datasets

    name, _, root = spec.removeprefix(PREFIX).partition(":")
    if not name or not root:
        raise DomainSSLError(
            f"--data {spec}: write torchgeo:<DatasetClass>:<root folder>, "
            "e.g. torchgeo:Sentinel2:/data/s2."
        )
    valid = [
        n
        for n in datasets.__all__
        if isinstance(c := getattr(datasets, n), type)
        and issubclass(c, datasets.RasterDataset | datasets.NonGeoDataset)
    ]
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=3)
        raise DomainSSLError(
            f"--data {spec}: torchgeo has no raster or non-geo data set class {name!r}; "
            f"use one of torchgeo.datasets, e.g. {', '.join(close or EXAMPLES)}."
        )
    path = Path(root).expanduser()
    if not path.exists():
        raise DomainSSLError(f"--data {spec}: the root folder {path} does not exist.")
    return getattr(datasets, name), path


def torchgeo_dataset(spec: str, config: DataConfig, seed: int = 0) -> tuple[Dataset, list[str]]:
    """The dataset of ``spec`` and its band names (``data.bands`` selects bands by name)."""
    from torchgeo.datasets import DatasetNotFoundError, RasterDataset

    cls, root = parse_spec(spec)
    known = getattr(cls, "all_bands", None) or getattr(cls, "all_band_names", None) or ()
    unknown = [b for b in config.bands or [] if known and b not in known]
    if unknown:
        raise DomainSSLError(
            f"data.bands {unknown} are not bands of torchgeo's {cls.__name__}: "
            f"choose among {', '.join(known)}."
        )
    dataset: Dataset
    try:
        if issubclass(cls, RasterDataset):
            dataset, names = _raster_windows(spec, cls, root, config, seed)
        else:
            dataset, names = _chips(spec, cls, root, config, list(known))
    except DatasetNotFoundError as err:
        raise DomainSSLError(
            f"--data {spec}: torchgeo found no {cls.__name__} data under {root} ({err}) "
            "Nothing is downloaded during a run: fetch it with torchgeo first."
        ) from None
    if config.in_chans is not None and config.in_chans != len(names):
        raise DomainSSLError(
            f"--data {spec} gives {len(names)} bands ({', '.join(names)}) but the config "
            f"expects data.in_chans={config.in_chans}: select bands with data.bands."
        )
    return dataset, names


def _chips(
    spec: str, cls: type[NonGeoDataset], root: Path, config: DataConfig, known: list[str]
) -> tuple[TorchGeoChips, list[str]]:
    """A non-geo data set built with ``root`` (and ``bands`` when it takes them)."""
    kwargs: dict[str, Any] = {"root": root}
    if config.bands:
        if "bands" not in inspect.signature(cls).parameters:
            raise DomainSSLError(f"{cls.__name__} takes no bands: unset data.bands.")
        kwargs["bands"] = config.bands
    chips = TorchGeoChips(cls(**kwargs), config.sample_size)
    names = config.bands or _names(getattr(chips.dataset, "bands", None)) or known
    channels = int(chips[0]["image"].shape[0])
    return chips, names or [f"B{i + 1}" for i in range(channels)]


def _names(value: object) -> list[str]:
    """``value`` when it is a sequence of band names, else no names."""
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    return []


def _raster_windows(
    spec: str, cls: type[RasterDataset], root: Path, config: DataConfig, seed: int
) -> tuple[TorchGeoWindows, list[str]]:
    """Windows of a raster data set, each band file checked to be present."""
    from torchgeo.datasets import DatasetNotFoundError

    if not cls.is_image:
        raise DomainSSLError(f"--data {spec}: {cls.__name__} holds labels (masks), not images.")
    bands = config.bands or list(cls.all_bands)
    if bands and not cls.all_bands:
        raise DomainSSLError(
            f"{cls.__name__} names no bands (all_bands), so data.bands cannot select: unset it."
        )
    kwargs: dict[str, Any] = {"paths": root, "bands": bands or None}
    if config.res is not None:
        kwargs["res"] = config.res
    try:
        dataset = cls(**kwargs)
    except DatasetNotFoundError:
        pattern = cls.filename_glob.format(bands[0]) if bands else cls.filename_glob
        raise DomainSSLError(
            f"--data {spec}: no file under {root} matches {cls.__name__}'s filename_glob "
            f"{pattern!r} (searched recursively; names follow its filename_regex). Point the "
            "root at the data set's folder, or set data.bands to the bands on disk."
        ) from None
    first = str(dataset.index.filepath.iloc[0])
    for band in bands if cls.separate_files else []:
        if not os.path.isfile(path := dataset._update_filepath(band, first)):
            raise DomainSSLError(
                f"--data {spec}: band {band} has no file {path} (next to {first}): "
                "set data.bands to the bands on disk."
            )
    with rasterio.open(first) as src:
        nodata, descriptions = src.nodata, src.descriptions
    size, length = config.sample_size, config.samples_per_epoch
    windows = TorchGeoWindows(dataset, size, length, config.max_nodata_fraction, nodata, seed)
    return windows, bands or band_names_of(descriptions)


class TorchGeoWindows(Dataset[Sample]):
    """Random ``size`` x ``size`` px windows of a torchgeo raster data set.

    Item ``key`` is the window torchgeo's ``RandomGeoSampler`` draws from a generator
    seeded by ``(seed, key)`` (:class:`~domainssl.data.samplers.DrawSampler` gives each
    process and epoch its own keys), so draws depend on no process's random state. Windows
    with more than ``max_nodata_fraction`` nodata (the files' nodata value, else 0: what
    torchgeo's merge fills and Sentinel-2's no-data value) or NaN pixels are redrawn.
    """

    def __init__(
        self,
        dataset: RasterDataset,
        size: int,
        length: int,
        max_nodata_fraction: float = 0.5,
        nodata: float | None = None,
        seed: int = 0,
    ) -> None:
        from torchgeo.samplers import RandomGeoSampler

        self.dataset, self.size, self.length, self.seed = dataset, size, length, seed
        self.max_nodata_fraction, self.nodata = max_nodata_fraction, 0 if nodata is None else nodata
        self.sampler = RandomGeoSampler(dataset, size=size, length=1)
        if not self.sampler.bounds:
            raise DomainSSLError(
                f"No file of {type(dataset).__name__} under {dataset.paths} is as large as "
                f"a window of data.sample_size={size} px: lower data.sample_size."
            )
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int) -> Sample:
        if self._pid != os.getpid():  # a forked worker opens its own file handles
            type(self.dataset)._cached_load_warp_file.cache_clear()
            self._pid = os.getpid()
        generator = draw_generator(self.seed, key)
        self.sampler.generator = generator
        for _ in range(MAX_DRAWS):
            file_seed = int(torch.randint(2**62, (), generator=generator))
            with torch.random.fork_rng(devices=[]):  # it picks the file with the global RNG
                torch.default_generator.manual_seed(file_seed)
                query = next(iter(self.sampler))
            try:
                image = self.dataset[query]["image"]  # (C, size, size) float32
            except RasterioIOError as err:
                raise DomainSSLError(
                    f"{type(self.dataset).__name__} under {self.dataset.paths}: reading a "
                    f"window failed ({err}); a file is corrupt or truncated."
                ) from None
            array = np.asarray(image)
            if SceneWindows.nodata_fraction(array, self.nodata) <= self.max_nodata_fraction:
                return {"image": resize(image, self.size), "label": -1}
        raise DomainSSLError(
            f"{MAX_DRAWS} random windows in a row of {self.dataset.paths} had more than "
            f"{self.max_nodata_fraction:.0%} nodata or NaN pixels: raise "
            "data.max_nodata_fraction or point the root at less empty files."
        )


class TorchGeoChips(Dataset[Sample]):
    """The ``image`` of each sample of a torchgeo non-geo data set, resized to ``size``;
    its ``label`` when it is a class index (for evaluation only), else -1."""

    def __init__(self, dataset: NonGeoDataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        sample = self.dataset[index]
        image = sample.get("image")
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            raise DomainSSLError(
                f"torchgeo's {type(self.dataset).__name__} yields no C x H x W 'image' "
                f"(got {getattr(image, 'shape', type(image).__name__)}): it cannot be "
                "pretrained on as chips."
            )
        label = sample.get("label")
        is_class = isinstance(label, int) or (isinstance(label, torch.Tensor) and label.ndim == 0)
        return {"image": resize(image.float(), self.size), "label": int(label) if is_class else -1}  # type: ignore[arg-type]
