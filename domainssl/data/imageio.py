"""Read one image file (GeoTIFF with any band count, or JPEG/PNG) as a (C, H, W) array."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageOps, UnidentifiedImageError
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from domainssl.errors import DomainSSLError

TIFF_SUFFIXES = {".tif", ".tiff"}
PIL_SUFFIXES = {".jpg", ".jpeg", ".png"}
IMAGE_SUFFIXES = TIFF_SUFFIXES | PIL_SUFFIXES
RGB_NAMES = ["red", "green", "blue"]
MAX_IMAGE_BYTES = 2**31
"""A whole-file read larger than this (2 GiB) is refused: such rasters are scenes."""


@dataclass(frozen=True)
class ImageFile:
    """Pixels of one file and the names of its bands."""

    array: np.ndarray  # (C, H, W)
    band_names: list[str]


def band_names_of(descriptions: tuple[str | None, ...]) -> list[str]:
    """Names from a raster's band descriptions, or ``B1..Bn`` when any is missing."""
    if all(descriptions):
        return [str(d) for d in descriptions]
    return [f"B{i + 1}" for i in range(len(descriptions))]


def read_image(path: Path) -> ImageFile:
    """Read a whole (small) image file; a corrupt or unsupported file is a clear error.

    JPEG/PNG are returned as displayed: their EXIF orientation is applied.
    """
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path)
    if suffix in PIL_SUFFIXES:
        return _read_pil(path)
    raise DomainSSLError(
        f"{path}: unsupported image type {suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}."
    )


def check_dtype(path: Path, dtype: str) -> None:
    """Refuse pixel types no image model takes (complex, bool)."""
    if np.dtype(dtype).kind in "cb":
        raise DomainSSLError(
            f"{path}: pixels of type {dtype} are not supported; convert the raster to an "
            "integer or float type (e.g. gdal_translate -ot Float32 or the amplitude)."
        )


def raster_source(path: Path) -> str | io.BytesIO:
    """The path as GDAL takes it; a name that is not valid UTF-8 is read into memory."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return io.BytesIO(path.read_bytes())
    return name


def _read_tiff(path: Path) -> ImageFile:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(raster_source(path)) as src:
                check_dtype(path, src.dtypes[0])
                size = src.count * src.height * src.width * np.dtype(src.dtypes[0]).itemsize
                if size > MAX_IMAGE_BYTES:
                    raise DomainSSLError(
                        f"{path}: declares {src.width}x{src.height} px x {src.count} bands "
                        f"({size / 1e9:.0f} GB), too large to read whole as a chip; use it "
                        "as a scene (data.kind=scenes) or fix its header."
                    )
                array = src.read()
                names = band_names_of(src.descriptions)
    except RasterioIOError as err:
        raise DomainSSLError(
            f"{path}: cannot read this TIFF ({err}). The file is corrupt or truncated: "
            "re-export it or remove it from the folder."
        ) from None
    return ImageFile(array, names)


def _read_pil(path: Path) -> ImageFile:
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise DomainSSLError(
            f"{path}: cannot decode this image ({err}). Re-export it or remove it."
        ) from None
    if image.mode in ("L", "I;16", "I", "F"):
        return ImageFile(np.asarray(image)[None], ["gray"])
    array = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    return ImageFile(np.ascontiguousarray(array), list(RGB_NAMES))
