"""Seeded generators of tiny torchgeo data sets in their on-disk layouts: a Sentinel-2 L2A
tile folder (one GeoTIFF per band under ``R10m/``, torchgeo's naming) and EuroSAT (13-band
chips in class folders under its nested ``ds/...`` folder, with a split file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fixtures import write_geotiff

EUROSAT_DIR = ("ds", "images", "remote_sensing", "otherDatasets", "sentinel_2", "tif")


def write_sentinel2_tile(
    root: Path,
    bands: tuple[str, ...] = ("B02", "B03", "B04", "B08"),
    size: int = 128,
    nodata_rows: int = 0,
    seed: int = 0,
) -> Path:
    """``root/R10m/T32ULU_20200101T103421_<band>_10m.tif``: uint16 10 m bands, EPSG:32632,
    0 = nodata in the first ``nodata_rows`` rows."""
    rng = np.random.default_rng(seed)
    for band in bands:
        array = rng.integers(100, 4000, (1, size, size)).astype(np.uint16)
        array[:, :nodata_rows] = 0
        write_geotiff(root / "R10m" / f"T32ULU_20200101T103421_{band}_10m.tif", array, nodata=0)
    return root


def write_eurosat(root: Path, per_class: int = 4, size: int = 16, seed: int = 0) -> Path:
    """Two classes of 13-band uint16 chips, all listed in ``eurosat-train.txt``."""
    rng = np.random.default_rng(seed)
    names = []
    for label, name in enumerate(("AnnualCrop", "Forest")):
        for i in range(per_class):
            chip = rng.integers(100, 4000, (13, size, size)) + 500 * label
            write_geotiff(
                root.joinpath(*EUROSAT_DIR, name, f"{name}_{i}.tif"), chip.astype(np.uint16)
            )
            names.append(f"{name}_{i}.jpg")  # the split files name the JPEG versions
    (root / "eurosat-train.txt").write_text("\n".join(names) + "\n")
    return root
