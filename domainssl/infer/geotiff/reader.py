"""Tiles of a GeoTIFF read as windows, with one rasterio handle per DataLoader worker."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from torch.utils.data import Dataset

from domainssl.data.eo import open_raster
from domainssl.data.imageio import check_dtype
from domainssl.errors import DomainSSLError
from domainssl.infer.tiles import TileGrid

Tile = dict[str, torch.Tensor | int]
READ_CACHE_MB = 128
"""GDAL block cache per reader process: enough for the block rows a tile row spans on
wide rasters; GDAL's default (5% of RAM) filled with 1.2 GB of decoded blocks per worker
on a 20480 px mosaic, memory that grew with the image up to that cap."""


@dataclass(frozen=True)
class RasterInfo:
    """What inference needs to know of the input raster (read once, never its pixels)."""

    path: Path
    height: int
    width: int
    count: int
    nodata: float | None
    crs: CRS | None
    transform: Affine

    @classmethod
    def of(cls, path: Path) -> RasterInfo:
        with open_raster(path) as src:
            check_dtype(path, src.dtypes[0])
            return cls(path, src.height, src.width, src.count, src.nodata, src.crs, src.transform)


def valid_pixels(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) bool of a (C, H, W) array: False where every band is nodata or any is NaN/inf."""
    valid = np.ones(array.shape[1:], dtype=bool)
    if nodata is not None:
        valid &= ~(array == nodata).all(axis=0)
    if array.dtype.kind == "f":
        valid &= np.isfinite(array).all(axis=0)
    return valid


class TileReader(Dataset[Tile]):
    """Tile ``index`` of ``grid`` as ``{"image": (C, T, T) float32, "valid": (T, T) bool,
    "index": index}``.

    Only the part of the tile inside the raster is read (one window); padding past the
    border and invalid pixels (nodata, NaN) read as 0, as training pads its tiles, and are
    marked invalid. Each worker process opens its own handle.
    """

    def __init__(self, raster: RasterInfo, grid: TileGrid) -> None:
        self.raster, self.grid = raster, grid
        self._handle: rasterio.DatasetReader | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.grid)

    def _source(self) -> rasterio.DatasetReader:
        if self._handle is None or self._pid != os.getpid():  # never a forked parent's handle
            self._handle, self._pid = open_raster(self.raster.path), os.getpid()
        return self._handle

    def __getitem__(self, index: int) -> Tile:
        size, raster = self.grid.tile, self.raster
        top, left = self.grid.origin(index)
        first_row, first_col = max(top, 0), max(left, 0)
        end_row, end_col = min(top + size, raster.height), min(left + size, raster.width)
        image = np.zeros((raster.count, size, size), dtype=np.float32)  # (C, T, T)
        valid = np.zeros((size, size), dtype=bool)  # (T, T)
        window = Window(first_col, first_row, end_col - first_col, end_row - first_row)
        try:
            with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB):
                array = self._source().read(window=window)  # (C, h, w)
        except RasterioIOError as err:
            raise DomainSSLError(
                f"{raster.path}: reading tile {index} failed ({err}); the file is corrupt or "
                "truncated: re-export it or copy it again."
            ) from None
        inside = valid_pixels(array, raster.nodata)  # (h, w)
        rows = slice(first_row - top, end_row - top)
        cols = slice(first_col - left, end_col - left)
        image[:, rows, cols] = np.where(inside, array, 0)
        valid[rows, cols] = inside
        return {"image": torch.from_numpy(image), "valid": torch.from_numpy(valid), "index": index}
