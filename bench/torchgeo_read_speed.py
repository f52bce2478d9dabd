"""Reading speed of torchgeo data sets (``--data torchgeo:...``) vs our scene reader, side by
side in one run on the same pixels.

The scene is a generated Sentinel-2 L2A 10 m tile (bands B02 B03 B04 B08, ``--side`` px,
uint16, 512 px deflate tiles as in a COG) written twice with the same pixels: one GeoTIFF per
band under ``R10m/`` in torchgeo's naming (the layout torchgeo's ``Sentinel2`` reads, our
scene reader cannot) and one stacked 4-band GeoTIFF (what our scene reader reads). Each
``--scene`` (e.g. the real Landsat-8 scene) adds rows for a stacked file only. Every row
reads the same number of random windows of one size through ``DataLoader(batch_size=32,
num_workers=0)``, best of ``--repeats`` reads (each a fresh dataset with other windows),
paths one after another (never at the same time). Windows per CPU second of the process are
reported next to windows per second: they hold when others share the machine's 2 cores.

- ours: ``SceneWindows`` (``--data scene.tif``) on the stacked file;
- ours + torchgeo: our torchgeo source (``--data torchgeo:RasterDataset:scene.tif`` and
  ``--data torchgeo:Sentinel2:tile/``), windows drawn by torchgeo's ``RandomGeoSampler``;
- torchgeo alone: ``RasterDataset`` / ``Sentinel2`` + ``RandomGeoSampler`` + ``stack_samples``.

    python bench/torchgeo_read_speed.py \
        --scene ../shared/data/geotiff/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from torch.utils.data import DataLoader, Dataset
from torchgeo.datasets import RasterDataset, Sentinel2, stack_samples
from torchgeo.samplers import RandomGeoSampler

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from domainssl.config import DataConfig
from domainssl.data.eo import SceneWindows
from domainssl.data.torchgeo_source import torchgeo_dataset

BANDS = ("B02", "B03", "B04", "B08")
BATCH = 32


def write_tile(folder: Path, side: int, seed: int = 0) -> tuple[Path, Path]:
    """The same pixels as ``folder/S2_tile/R10m/T32ULU_..._<band>_10m.tif`` band files and as
    ``folder/stacked.tif``; a smooth field plus noise, like reflectance x 1e4."""
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "width": side, "height": side, "dtype": "uint16",
        "crs": "EPSG:32632", "transform": from_origin(399960, 5900040, 10, 10),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
        "predictor": 2, "nodata": 0,
    }  # fmt: skip
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    tile = folder / "S2_tile"
    (tile / "R10m").mkdir(parents=True, exist_ok=True)
    with rasterio.open(folder / "stacked.tif", "w", count=len(BANDS), **profile) as stacked:
        for index, band in enumerate(BANDS, start=1):
            field = 800 + 1500 * np.outer(ramp, ramp[::-1] * (index / 4))
            array = (field + rng.normal(0, 120, (side, side))).clip(1, 10000).astype(np.uint16)
            stacked.write(array, index)
            stacked.set_band_description(index, band)
            path = tile / "R10m" / f"T32ULU_20200101T103421_{band}_10m.tif"
            with rasterio.open(path, "w", count=1, **profile) as single:
                single.write(array, 1)
    return tile, folder / "stacked.tif"


def rate(build: Callable[[int], tuple[Dataset, dict]], repeats: int) -> tuple[float, float]:
    """Best windows per wall-clock second and per CPU second (of this process) over
    ``repeats`` reads of every batch of ``build(seed)``: a fresh dataset, so fresh file
    handles, and other windows each time; construction excluded."""
    wall, cpu = 0.0, 0.0
    for seed in range(repeats):
        dataset, loader_args = build(seed)
        loader = DataLoader(dataset, batch_size=BATCH, num_workers=0, **loader_args)
        start, start_cpu = time.perf_counter(), time.process_time()
        count = sum(len(batch["image"]) for batch in loader)
        wall = max(wall, count / (time.perf_counter() - start))
        cpu = max(cpu, count / (time.process_time() - start_cpu))
    return wall, cpu


def rows_for(
    name: str, stacked: Path, tile: Path | None, size: int, count: int, repeats: int
) -> list[tuple[str, str, tuple[float, float]]]:
    """(scene, path, (windows per second, per CPU second)) for each path of one scene."""

    def ours(seed: int) -> tuple[Dataset, dict]:
        return SceneWindows([stacked], size, count, max_nodata_fraction=1.0, seed=seed), {}

    def via(spec: str, bands: list[str] | None) -> Callable[[int], tuple[Dataset, dict]]:
        config = DataConfig(
            bands=bands, sample_size=size, samples_per_epoch=count, max_nodata_fraction=1.0
        )
        return lambda seed: (torchgeo_dataset(spec, config, seed)[0], {})

    def alone(make: Callable[[], RasterDataset]) -> Callable[[int], tuple[Dataset, dict]]:
        def build(seed: int) -> tuple[Dataset, dict]:
            torch.manual_seed(seed)
            dataset = make()
            sampler = RandomGeoSampler(dataset, size=size, length=count)
            return dataset, {"sampler": sampler, "collate_fn": stack_samples}

        return build

    paths: list[tuple[str, Callable[[int], tuple[Dataset, dict]]]] = [
        ("domainssl SceneWindows, stacked file (`--data scene.tif`)", ours),
        (
            "domainssl torchgeo source, stacked file (`torchgeo:RasterDataset:`)",
            via(f"torchgeo:RasterDataset:{stacked}", None),
        ),
        (
            "torchgeo RasterDataset + RandomGeoSampler, stacked file",
            alone(lambda: RasterDataset(paths=[str(stacked)])),
        ),
    ]
    if tile is not None:
        paths += [
            (
                "domainssl torchgeo source, band files (`torchgeo:Sentinel2:`)",
                via(f"torchgeo:Sentinel2:{tile}", list(BANDS)),
            ),
            (
                "torchgeo Sentinel2 + RandomGeoSampler, band files",
                alone(lambda: Sentinel2(paths=tile, bands=BANDS)),
            ),
        ]
    return [(name, path, rate(build, repeats)) for path, build in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scene", type=Path, action="append", default=[])
    parser.add_argument("--side", type=int, default=5000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--windows", type=int, nargs="+", default=[2048, 512])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tile, stacked = write_tile(Path(tmp), args.side)
        print(f"Tile written in {time.perf_counter() - start:.0f} s", flush=True)
        for size, count in zip(args.sizes, args.windows, strict=True):
            name = f"generated S2 tile {args.side} px"
            rows = rows_for(name, stacked, tile, size, count, args.repeats)
            for scene in args.scene:
                rows += rows_for(scene.name, scene, None, size, count, args.repeats)
            lines += [
                f"### {size} px windows, {count} per read, best of {args.repeats} reads "
                f"(batch {BATCH}, 0 workers)",
                "",
                "| scene | reading path | windows/s | windows/CPU-s | vs SceneWindows (CPU) |",
                "|---|---|---|---|---|",
            ]
            ours = {scene: cpu for scene, path, (_, cpu) in rows if "SceneWindows" in path}
            for scene, path, (wall, cpu) in rows:
                lines.append(
                    f"| {scene} | {path} | {wall:.0f} | {cpu:.0f} | {cpu / ours[scene]:.2f}x |"
                )
            lines.append("")
            print("\n".join(lines[-len(rows) - 5 :]), flush=True)
    command = "python bench/torchgeo_read_speed.py" + "".join(f" --scene {s}" for s in args.scene)
    if args.side != 5000:
        command += f" --side {args.side}"
    write_section(
        "torchgeo-read-speed",
        "## Reading torchgeo data sets (`--data torchgeo:...`) vs our scene reader, 2 CPU cores"
        f"\n\nCommand: `{command}`\n\n" + "\n".join(lines),
    )


if __name__ == "__main__":
    main()
