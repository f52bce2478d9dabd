"""Output GeoTIFFs: profile, streamed row writing, the embedding map with its PCA picture,
atomic replacement and the optional cloud-optimized layout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from domainssl.infer.geotiff.resumable import PartialRaster, publish
from domainssl.infer.geotiff.stitch import BLOCK, RowBlockWriter
from domainssl.infer.pca import PcaStretch, Reservoir, write_pca_picture
from domainssl.io import atomic_write, temporary_beside


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
    path = temporary_beside(beside)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def write_output(path: Path, write: Callable[[Path], None], cog: bool, resampling: str) -> None:
    """``write`` a GeoTIFF under a temporary name beside ``path`` (removed on any error or
    interrupt), optionally re-laid out as a cloud-optimized GeoTIFF, then renamed to ``path``."""
    if not cog:
        atomic_write(path, write)
        return
    with _scratch(path) as plain:
        write(plain)
        atomic_write(path, lambda target: to_cog(plain, target, resampling))


def to_cog(source: Path, target: Path, resampling: str) -> None:
    """Copy ``source`` to ``target`` as a cloud-optimized GeoTIFF (GDAL's COG driver,
    overviews resampled with ``resampling``)."""
    rasterio.shutil.copy(
        source, target, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK,
        RESAMPLING=resampling, BIGTIFF="IF_SAFER",
    )  # fmt: skip


def write_rows(
    partial: PartialRaster, names: list[str], tags: dict[str, Any], blocks: Iterator[np.ndarray]
) -> Path:
    """Stream encoded rows (bands, n, W), top to bottom from row ``partial.rows_done``,
    into the partial GeoTIFF; the complete file."""
    dst = partial.open()
    if not partial.rows_done:
        dst.descriptions = tuple(names)
        dst.update_tags(**tags)
    writer = RowBlockWriter(dst, partial.rows_done, partial.written)
    try:
        for rows in blocks:
            writer.add(rows)
    except BaseException:
        writer.dst.close()
        if not partial.note.is_file():  # nothing flushed yet: nothing worth resuming
            partial.discard()
        raise
    return partial.finish(writer.close())


def publish_output(partial: PartialRaster, complete: Path, cog: bool, resampling: str) -> None:
    """Move the ``complete`` file into place (as a cloud-optimized copy when ``cog``)."""
    if cog:
        atomic_write(partial.out, lambda target: to_cog(complete, target, resampling))
        partial.discard()
    else:
        publish(complete, partial.out)


def refill(reservoir: Reservoir, path: Path, rows: int) -> None:
    """Offer the valid vectors of the first ``rows`` rows of the map ``path`` (a resumed
    run's earlier part) to ``reservoir``."""
    with rasterio.open(path) as src:
        for top in range(0, rows, BLOCK):
            window = Window(0, top, src.width, min(BLOCK, rows - top))
            block = src.read(window=window)  # (D, n, W)
            vectors = block.reshape(len(block), -1).T  # (n * W, D)
            reservoir.add(vectors[np.isfinite(vectors).all(axis=1)])


def write_embedding(
    partial: PartialRaster,
    pca_out: Path | None,
    names: list[str],
    tags: dict[str, Any],
    blocks: Iterator[np.ndarray],
    cog: bool,
) -> None:
    """The (D, H', W') float32 embedding map from its rows (D, n, W') (NaN: nodata),
    sampling valid cells while it streams; then ``pca_out`` (unless None), its 3-band uint8
    PCA picture, from a second pass over the map."""
    reservoir = Reservoir(len(names))
    if partial.rows_done:
        refill(reservoir, partial.path, partial.rows_done)

    def sampled() -> Iterator[np.ndarray]:
        for block in blocks:
            reservoir.add(block[:, np.isfinite(block).all(axis=0)].T)  # (n, D)
            yield block

    complete = write_rows(partial, names, tags, sampled() if pca_out else blocks)
    if pca_out is None:
        publish_output(partial, complete, cog, "average")
        return
    stretch = PcaStretch.fit(reservoir.vectors())
    pca_profile = {**partial.profile, "count": 3, "dtype": "uint8", "nodata": 0}

    def paint(target: Path) -> None:
        write_pca_picture(complete, target, stretch, {**pca_profile, "photometric": "RGB"})

    write_output(pca_out, paint, cog, "average")
    publish_output(partial, complete, cog, "average")
