"""An embedding raster as a Zarr store that xarray (with rioxarray) and GDAL open: array
``embedding`` (band, y, x; float32, NaN where nothing was embedded), the cell-centre
coordinates ``x`` and ``y``, the ``band`` numbers, and a CF grid mapping ``spatial_ref``
(CRS WKT and GDAL geotransform) that ``embedding`` names as its coordinate, plus GDAL's own
``_CRS``. Checked once with xarray 2026.9 and rioxarray 0.19 (not dependencies): the CRS, the
transform and the values came back as the GeoTIFF's.

The store is Zarr format 2 with consolidated metadata: GDAL 3.10, the one in rasterio's
wheels, cannot read the codecs zarr-python 3 writes in format 3. It is written one row of
chunks at a time, so memory is bounded by one row of chunks, not by the scene."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.windows import Window

CHUNK_VALUES = 2**22
"""Values per chunk at most (16 MB of float32), over all bands of a square of cells."""


def chunk_side(bands: int) -> int:
    """Side (cells) of a chunk's square: 256, halved until the chunk fits ``CHUNK_VALUES``
    (16 at least)."""
    side = 256
    while side > 16 and bands * side * side > CHUNK_VALUES:
        side //= 2
    return side


def _coordinate(group: zarr.Group, name: str, values: np.ndarray) -> None:
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, fill_value=None)
    array[:] = values
    array.attrs["_ARRAY_DIMENSIONS"] = [name]


def write_zarr(raster: Path, out: Path) -> None:
    """Write the embedding raster ``raster`` (a GeoTIFF) as the Zarr store ``out``; an empty
    file at ``out`` (a temporary name) is replaced by the store's folder."""
    if out.is_file():
        out.unlink()
    group = zarr.open_group(str(out), mode="w", zarr_format=2)
    with rasterio.open(raster) as src:
        bands, height, width = src.count, src.height, src.width
        transform, crs = src.transform, src.crs
        side = chunk_side(bands)
        embedding = group.create_array("embedding", shape=(bands, height, width),
                                       dtype="float32", chunks=(bands, side, side),
                                       fill_value=np.nan)  # fmt: skip
        for top in range(0, height, side):
            rows = min(side, height - top)
            block = src.read(window=Window(0, top, width, rows), out_dtype="float32")
            embedding[:, top : top + rows, :] = block
    attributes: dict[str, Any] = {"_ARRAY_DIMENSIONS": ["band", "y", "x"]}
    if transform.b == transform.d == 0:  # north-up: one x per column, one y per row
        _coordinate(group, "x", transform.c + transform.a * (np.arange(width) + 0.5))
        _coordinate(group, "y", transform.f + transform.e * (np.arange(height) + 0.5))
    _coordinate(group, "band", np.arange(1, bands + 1, dtype=np.int32))
    if crs is not None:
        wkt = crs.to_wkt()
        grid = group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=None)
        grid.attrs.update(_ARRAY_DIMENSIONS=[], crs_wkt=wkt, spatial_ref=wkt,
                          GeoTransform=" ".join(str(v) for v in transform.to_gdal()))  # fmt: skip
        # a coordinate of ``embedding`` (as rioxarray writes it), so a DataArray keeps its CRS
        attributes.update(grid_mapping="spatial_ref", coordinates="spatial_ref", _CRS={"wkt": wkt})
    embedding.attrs.update(attributes)
    zarr.consolidate_metadata(str(out))
