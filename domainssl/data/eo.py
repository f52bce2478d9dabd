"""Large GeoTIFF scenes sampled as random windows (never read whole)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window
from torch.utils.data import Dataset

from domainssl.data.folder import Sample, list_images, to_tensor
from domainssl.data.imageio import PIL_SUFFIXES, RGB_NAMES, band_names_of, check_dtype
from domainssl.data.seeds import draw_generator
from domainssl.errors import DomainSSLError

MAX_DRAWS = 200  # a scene 90% nodata still yields a window with odds 1 - 0.9**200


def list_scenes(path: Path) -> list[Path]:
    """A single raster, or every raster (GeoTIFF, or large PNG/JPEG/TIFF such as pathology
    regions of interest) in a folder and its subfolders."""
    if not path.exists():
        raise DomainSSLError(f"Data path {path} does not exist: check --data.")
    return [path] if path.is_file() else list_images(path)


def open_raster(path: Path) -> rasterio.DatasetReader:
    """``path`` opened for reading (a clear error when it is missing or not a raster)."""
    if not path.is_file():
        raise DomainSSLError(f"Input image {path} does not exist: check the path.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as err:
        raise DomainSSLError(
            f"{path}: cannot open this raster ({err}); it is corrupt or not a GeoTIFF."
        ) from None
    except UnicodeEncodeError:
        raise DomainSSLError(
            f"{path!r}: the file name is not valid UTF-8, which GDAL cannot open: rename it."
        ) from None


class SceneWindows(Dataset[Sample]):
    """Random ``size`` x ``size`` windows from one or more scenes, weighted by scene area.

    Item ``key`` is the window of draw ``key``, a pure function of ``(seed, key)``
    (:class:`~domainssl.data.samplers.DrawSampler` hands each process and epoch its own
    keys). Each worker process keeps its own open handles. Windows whose nodata (or NaN)
    share exceeds ``max_nodata_fraction`` are rejected and redrawn.

    Args:
        scenes: GeoTIFF paths, all with the same band count.
        size: window side in pixels.
        length: windows per epoch.
        max_nodata_fraction: rejection threshold.
        in_chans: expected band count (None: that of the first scene).
        seed: the run seed the draws derive from.
    """

    def __init__(
        self,
        scenes: list[Path],
        size: int,
        length: int,
        max_nodata_fraction: float = 0.5,
        in_chans: int | None = None,
        seed: int = 0,
    ) -> None:
        self.scenes, self.size, self.length, self.seed = scenes, size, length, seed
        self.max_nodata_fraction = max_nodata_fraction
        shapes, nodata = [], []
        for path in scenes:
            with open_raster(path) as src:
                check_dtype(path, src.dtypes[0])
                if src.width < size or src.height < size:
                    raise DomainSSLError(
                        f"{path} is {src.width}x{src.height} px, smaller than the window "
                        f"data.sample_size={size}: lower data.sample_size."
                    )
                shapes.append((src.count, src.height, src.width))
                nodata.append(src.nodata)
                names = band_names_of(src.descriptions)
                if path.suffix.lower() in PIL_SUFFIXES and src.count == len(RGB_NAMES):
                    names = list(RGB_NAMES)  # as the chip reader names JPEG/PNG bands
        counts = {c for c, _, _ in shapes}
        if len(counts) > 1:
            raise DomainSSLError(
                f"Scenes in {scenes[0].parent} have different band counts {counts}."
            )
        self.in_chans = shapes[0][0]
        if in_chans is not None and in_chans != self.in_chans:
            raise DomainSSLError(
                f"{scenes[0]} has {self.in_chans} bands but the config expects "
                f"data.in_chans={in_chans}: use data of that band count or set data.in_chans."
            )
        self.band_names = names
        self.nodata = nodata
        self.extents = [(h - size + 1, w - size + 1) for _, h, w in shapes]
        areas = torch.tensor([float(h * w) for h, w in self.extents])
        self.weights = areas / areas.sum()
        self._handles: dict[int, rasterio.DatasetReader] = {}
        self._pid = -1

    def __len__(self) -> int:
        return self.length

    def _handle(self, index: int) -> rasterio.DatasetReader:
        if self._pid != os.getpid():  # a forked worker must not reuse the parent's handles
            self._handles, self._pid = {}, os.getpid()
        if index not in self._handles:
            self._handles[index] = open_raster(self.scenes[index])
        return self._handles[index]

    def __getitem__(self, key: int) -> Sample:
        generator = draw_generator(self.seed, key)
        for _ in range(MAX_DRAWS):
            scene = int(torch.multinomial(self.weights, 1, generator=generator))
            rows, cols = self.extents[scene]
            top = int(torch.randint(rows, (), generator=generator))
            left = int(torch.randint(cols, (), generator=generator))
            window = Window(left, top, self.size, self.size)
            try:
                array = self._handle(scene).read(window=window)
            except RasterioIOError as err:
                raise DomainSSLError(
                    f"{self.scenes[scene]}: reading a window failed ({err}); the file is "
                    "corrupt or truncated: re-export it or remove it."
                ) from None
            if self.nodata_fraction(array, self.nodata[scene]) <= self.max_nodata_fraction:
                return {"image": to_tensor(array), "label": -1}
        raise DomainSSLError(
            f"{MAX_DRAWS} random windows in a row had more than "
            f"{self.max_nodata_fraction:.0%} nodata or NaN/inf pixels "
            f"({', '.join(map(str, self.scenes))}): the scenes are mostly empty; raise "
            "data.max_nodata_fraction, crop them or fill the NaN/inf values."
        )

    @staticmethod
    def nodata_fraction(array: np.ndarray, nodata: float | None) -> float:
        """Share of pixels where every band is nodata, or any band is NaN/inf."""
        invalid = np.zeros(array.shape[1:], dtype=bool)
        if nodata is not None:
            invalid |= (array == nodata).all(axis=0)
        if array.dtype.kind == "f":
            invalid |= ~np.isfinite(array).all(axis=0)
        return float(invalid.mean())
