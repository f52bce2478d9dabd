"""Output GeoTIFFs: profile, streamed row writing, the embedding map with its PCA picture,
atomic replacement and the optional cloud-optimized layout."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS

from domainssl.infer.pca import PcaStretch, Reservoir, write_pca_picture
from domainssl.infer.stitch import BLOCK, RowBlockWriter, Rows, to_floats
from domainssl.io import atomic_write


def base_profile(height: int, width: int, crs: CRS | None, transform: Affine) -> dict[str, Any]:
    """A tiled (``BLOCK`` px), deflate-compressed GeoTIFF profile; bands and dtype to add."""
    return {
        "driver": "GTiff", "height": height, "width": width, "crs": crs,
        "transform": transform, "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
        "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip


@contextmanager
def _scratch(beside: Path) -> Iterator[Path]:
    """A temporary file path next to ``beside``, removed on exit."""
    handle, name = tempfile.mkstemp(dir=beside.parent, prefix=f".{beside.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def write_output(path: Path, write: Callable[[Path], None], cog: bool, resampling: str) -> None:
    """``write`` a GeoTIFF under a temporary name beside ``path`` (removed on any error or
    interrupt), optionally re-laid out as a cloud-optimized GeoTIFF (GDAL's COG driver,
    overviews resampled with ``resampling``), then renamed to ``path``."""

    def produce(target: Path) -> None:
        if not cog:
            write(target)
            return
        with _scratch(path) as plain:
            write(plain)
            rasterio.shutil.copy(
                plain, target, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK,
                RESAMPLING=resampling, BIGTIFF="IF_SAFER",
            )  # fmt: skip

    atomic_write(path, produce)


def write_rows(
    path: Path,
    profile: dict[str, Any],
    names: list[str],
    tags: dict[str, Any],
    blocks: Iterator[np.ndarray],
) -> None:
    """Stream encoded rows (bands, n, W), top to bottom, into a new GeoTIFF."""
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = tuple(names)
        dst.update_tags(**tags)
        writer = RowBlockWriter(dst)
        for rows in blocks:
            writer.add(rows)
        writer.close()


def write_embedding(
    out: Path,
    pca_out: Path,
    profile: dict[str, Any],
    names: list[str],
    tags: dict[str, Any],
    rows: Iterator[Rows],
    cog: bool,
) -> None:
    """The (D, H', W') float32 embedding map ``out``, sampling valid cells while it streams;
    then ``pca_out``, its 3-band uint8 PCA picture, from a second pass over the map."""
    reservoir = Reservoir(len(names))

    def sampled() -> Iterator[np.ndarray]:
        for values, valid in rows:
            reservoir.add(values[:, valid].T)  # (n, D)
            yield to_floats(values, valid)

    map_profile = {**profile, "count": len(names), "dtype": "float32", "nodata": np.nan}
    pca_profile = {**profile, "count": 3, "dtype": "uint8", "nodata": 0, "photometric": "RGB"}

    def write(path: Path) -> None:
        write_rows(path, map_profile, names, tags, sampled())
        stretch = PcaStretch.fit(reservoir.vectors())

        def paint(target: Path) -> None:
            write_pca_picture(path, target, stretch, pca_profile)

        write_output(pca_out, paint, cog, "average")

    write_output(out, write, cog, "average")
