"""Seeded generators of tiny real-layout fixtures: GeoTIFF/JPEG chip folders and scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin


def write_geotiff(path: Path, array: np.ndarray, nodata: float | None = None) -> Path:
    """Write a (C, H, W) array as a georeferenced GeoTIFF (EPSG:32632, 10 m)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = array.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=array.dtype,
        crs="EPSG:32632",
        transform=from_origin(500000, 5000000, 10, 10),
        nodata=nodata,
    ) as dst:
        dst.write(array)
    return path


def class_pattern(rng: np.random.Generator, label: int, bands: int, size: int) -> np.ndarray:
    """A chip whose band means and texture depend on its class (separable but noisy)."""
    base = rng.normal(0, 1, (bands, size, size))
    stripes = np.sin(np.arange(size) * (label + 1) * 0.6)[None, None, :]
    return base * 10 + 60 * (label + 1) + 30 * stripes


def write_chip_folder(
    root: Path,
    classes: int = 2,
    per_class: int = 6,
    bands: int = 4,
    size: int = 32,
    seed: int = 0,
    fmt: str = "tif",
) -> Path:
    """``root/class_k/chip_i.<fmt>``: GeoTIFF (uint16, any bands) or JPEG (RGB)."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        for i in range(per_class):
            chip = class_pattern(rng, label, bands if fmt == "tif" else 3, size)
            path = root / f"class_{label}" / f"chip_{i}.{fmt}"
            if fmt == "tif":
                write_geotiff(path, chip.clip(0, 65535).astype(np.uint16))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(chip.clip(0, 255).astype(np.uint8).transpose(1, 2, 0)).save(path)
    return root


def write_scene(
    path: Path,
    bands: int = 4,
    height: int = 200,
    width: int = 160,
    nodata_rows: int = 0,
    seed: int = 0,
) -> Path:
    """A uint16 scene; its first ``nodata_rows`` rows are nodata (0)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(100, 4000, (bands, height, width)).astype(np.uint16)
    array[:, :nodata_rows] = 0
    return write_geotiff(path, array, nodata=0)
