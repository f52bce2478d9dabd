"""Land-cover segmentation on the real Landsat-8 scene: scene-pretrained encoder vs random.

Small sample, on purpose spelled out: the scene comes with 4 hand-drawn polygons (water,
crop, tree, developed; 80-210 pixels each). Each polygon is rasterized and split in two
along its centre column: the west half labels a training chip, the east half a test chip
(64 px chips centred on the polygon, all other pixels ignored). The encoder is pretrained
on random windows of the same (unlabeled) scene with ``domainssl pretrain``; both encoders
get the same decoder training (fixed epochs) and are scored on the test halves.

    L8=../shared/data/geotiff/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT
    python bench/landsat_segment.py --scene $L8.TIF --polygons ${L8}_polygons.gpkg
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from domainssl.transfer.segmentation.training import SegmentTrainConfig
from domainssl.transfer.segmentation.transfer import SegmentSettings, transfer_segment

CHIP, IGNORE = 64, 255
BASELINES: tuple[Literal["pretrained", "random"], ...] = ("pretrained", "random")


def write_chips(scene: Path, polygons: Path, root: Path) -> list[str]:
    """train/val/test chips (val = train: no model selection) with half-polygon masks."""
    shapes = gpd.read_file(polygons)
    classes = sorted(shapes["name"].unique())
    with rasterio.open(scene) as source:
        shapes = shapes.to_crs(source.crs)
        for index, row in shapes.iterrows():
            label = rasterize(
                [(row.geometry, 1)], out_shape=source.shape, transform=source.transform
            )
            rows, cols = np.nonzero(label)
            centre_row, centre_col = int(rows.mean()), int(cols.mean())
            window = Window(centre_col - CHIP // 2, centre_row - CHIP // 2, CHIP, CHIP)
            image = source.read(window=window)
            inside = label[window.toslices()] > 0  # (CHIP, CHIP)
            west = np.arange(CHIP)[None, :] < CHIP // 2
            profile = {
                "driver": "GTiff", "width": CHIP, "height": CHIP, "count": source.count,
                "dtype": source.dtypes[0], "crs": source.crs,
                "transform": source.window_transform(window),
            }  # fmt: skip
            halves = {"train": inside & west, "val": inside & west, "test": inside & ~west}
            for part, keep in halves.items():
                mask = np.where(keep, classes.index(row["name"]), IGNORE).astype(np.uint8)
                for kind, array, extra in (
                    ("images", image, {}),
                    ("masks", mask[None], {"count": 1, "dtype": "uint8", "nodata": IGNORE}),
                ):
                    path = root / part / kind / f"polygon{index}.tif"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with rasterio.open(path, "w", **(profile | extra)) as out:
                        out.write(array)
    return classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scene", type=Path, required=True)
    parser.add_argument("--polygons", type=Path, required=True)
    parser.add_argument("--pretrain-time", default="00:05:00")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/out/landsat_segment"))
    args = parser.parse_args()
    names = write_chips(args.scene, args.polygons, args.out / "data")
    run = args.out / "scene-simclr"
    if not (run / "backbone.json").is_file():
        command = [
            sys.executable, "-m", "domainssl", "pretrain", "--domain", "eo", "--data",
            str(args.scene), "--max-time", args.pretrain_time, "--epochs", "1000",
            "--out", str(args.out), "--name", run.name,
        ]  # fmt: skip
        with open(args.out / "pretrain.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    rows = []
    for baseline in BASELINES:
        training = SegmentTrainConfig(CHIP, args.epochs, batch_size=4)
        settings = SegmentSettings(baseline, training, overlays=4)
        m = transfer_segment(run, args.out / "data", args.out / baseline, settings)
        ious = m["per_class_iou"]
        per_class = " | ".join("n/a" if v is None else f"{v:.3f}" for v in ious)
        print(f"{baseline}: pixel accuracy {m['pixel_accuracy']:.4f}, IoU {ious}", flush=True)
        rows.append(f"| {baseline} | {m['pixel_accuracy']:.4f} | {per_class} |")
    table = [
        f"| encoder | pixel accuracy | {' | '.join(f'IoU {n}' for n in names)} |",
        "|---|---|" + "---|" * len(names),
        *rows,
    ]
    header = (
        "## Segmentation transfer: Landsat-8 land cover (small sample: 4 polygons, west "
        "halves train, east halves test)\n\n"
        f"Encoder pretrained with SimCLR on random 64 px windows of the same scene for "
        f"{args.pretrain_time}; decoder + encoder fine-tuned {args.epochs} epochs on 64 px "
        "chips.\n\n"
        f"Command: `python bench/landsat_segment.py --scene {args.scene} --polygons "
        f"{args.polygons}`\n"
    )
    markdown = "\n".join(table)
    print(markdown)
    write_section("transfer-segment-landsat", header + "\n" + markdown)


if __name__ == "__main__":
    main()
