"""Whether a folder of images is chips or large images to window.

A folder whose images are much larger than ``data.sample_size`` (MoNuSeg's 1000 px tiles,
pathology regions of interest, satellite scenes saved as PNG) would lose its detail if each
image were shrunk to one sample; such a folder is sampled like scenes instead: native-
resolution windows, area-weighted, ``data.samples_per_epoch`` per epoch.
"""

from __future__ import annotations

import statistics
import warnings
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from domainssl.data.folder import list_images
from domainssl.data.imageio import raster_source
from domainssl.errors import DomainSSLError

LARGE_FACTOR = 2.0
"""Images whose shorter side exceeds this many sample sizes are windowed, not resized."""
PROBED_FILES = 20
"""Image headers read to judge a folder (the first ones in sorted order)."""


def typical_size(files: list[Path]) -> tuple[int, int] | None:
    """Median (height, width) of the files among ``files`` whose centre pixel reads; None if
    none does. A truncated file or a header declaring a size the file does not hold is
    left to the chip reader, which names it."""
    sizes = []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(raster_source(path)) as src:
                    src.read(1, window=Window(src.width // 2, src.height // 2, 1, 1))
                    sizes.append((src.height, src.width))
        except RasterioIOError:
            continue
    if not sizes:
        return None
    return int(statistics.median(h for h, _ in sizes)), int(statistics.median(w for _, w in sizes))


def large_images(folder: Path, sample_size: int) -> tuple[int, int] | None:
    """The typical (height, width) of ``folder``'s images when their shorter side exceeds
    :data:`LARGE_FACTOR` x ``sample_size``; None for a folder of chips (or no folder)."""
    if not folder.is_dir():
        return None
    try:
        files = list_images(folder)
    except DomainSSLError:  # no image at all: the reader of the folder's kind says so
        return None
    size = typical_size(files[:PROBED_FILES])
    return size if size is not None and min(size) > LARGE_FACTOR * sample_size else None
