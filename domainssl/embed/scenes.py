"""One GeoTIFF scene -> ``<name>.tif``, a cloud-optimized embedding raster (one pixel per
tile, D float32 bands, the scene's CRS and a scaled transform, NaN where the input had nothing
to embed), and/or ``<name>.parquet``, the same cells as GeoParquet, and/or ``<name>.zarr``,
the same raster as a Zarr store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from domainssl.embed.compute import Compute
from domainssl.embed.geoparquet import write_geoparquet
from domainssl.embed.manifest import WORK
from domainssl.embed.zarr_store import write_zarr
from domainssl.infer.geotiff.infer import infer_geotiff
from domainssl.io import staged

FORMATS = ("tif", "parquet", "zarr")


@dataclass(frozen=True)
class SceneSettings:
    """What is written per scene."""

    formats: tuple[str, ...]
    """Some of ``FORMATS``."""

    @property
    def chosen(self) -> list[str]:
        """The chosen formats, in ``FORMATS`` order (the order of the outputs)."""
        return [suffix for suffix in FORMATS if suffix in self.formats]


def scene_outputs(out_dir: Path, name: str, settings: SceneSettings) -> list[Path]:
    """The files one scene's embedding consists of, in ``FORMATS`` order."""
    return [out_dir / f"{name}.{suffix}" for suffix in settings.chosen]


def embed_scene(source: Path, out_dir: Path, name: str, model_dir: Path,
                settings: SceneSettings, compute: Compute) -> int:  # fmt: skip
    """Embed every tile of ``source`` that holds a valid pixel; outputs appear under their
    final names only when all are complete. Returns the tiles embedded."""
    raster = out_dir / WORK / "work" / f"{name}.{os.getpid()}.tif"
    raster.parent.mkdir(parents=True, exist_ok=True)
    try:
        with staged(scene_outputs(out_dir, name, settings)) as temps:
            temp = dict(zip(settings.chosen, temps, strict=True))
            summary = infer_geotiff(
                model_dir, source, raster, compute.tile, 0, compute.batch_size,
                device=compute.device, num_workers=compute.num_workers, precision=compute.precision,
                cog=True, picture=False,
            )  # fmt: skip
            if "parquet" in temp:
                write_geoparquet(raster, temp["parquet"])
            if "zarr" in temp:
                write_zarr(raster, temp["zarr"])
            if "tif" in temp:
                os.replace(raster, temp["tif"])
    finally:
        raster.unlink(missing_ok=True)
    return summary.tiles_run
