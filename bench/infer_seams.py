"""Seamlessness of blended segmentation tiles on the real Landsat-8 scene.

`infer_geotiff --probabilities` at one tile size, blended (overlap > 0) and plainly tiled
(overlap 0). For each class-probability map: the mean absolute difference of neighbouring
pixels whose pair straddles a tile seam (a place where a tile starts or ends, so the set of
tiles that predicted the two pixels differs) vs that of all other neighbouring pairs
(inside tiles). Seamless output has a ratio near 1.

    L8=../shared/data/geotiff/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF
    python bench/infer_seams.py --scene $L8
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from domainssl.infer.geotiff.infer import infer_geotiff
from domainssl.infer.tiles import TileGrid, blend_grid

SCENE = Path("../shared/data/geotiff/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF")
MODEL = Path("bench/out/landsat_segment/pretrained")
PHASE = 8
"""Seams lie at multiples of 8 px (tile and stride are): the phase of the control pairs."""


def seam_pairs(length: int, grid: TileGrid, count: int) -> np.ndarray:
    """(length - 1,) bool along one axis of ``count`` tiles: pair (i, i + 1) straddles the
    start or the end of a tile."""
    starts = np.arange(count) * grid.stride - grid.lead
    edges = np.concatenate([starts, starts + grid.tile])
    edges = edges[(edges > 0) & (edges < length)]
    seams = np.zeros(length - 1, dtype=bool)
    seams[edges - 1] = True
    return seams


def seam_statistics(probs: np.ndarray, grid: TileGrid) -> list[tuple[float, float, float]]:
    """(seam, interior, interior at the seams' phase) mean |difference| of neighbouring
    pixels, per map of (K, H, W). The phase control keeps interior pairs whose boundary
    lies at the same position modulo ``PHASE`` as the seams (the network's strided layers
    leave a periodic pattern)."""
    _, height, width = probs.shape
    masks = []
    for length, count in ((width, grid.cols), (height, grid.rows)):
        seams = seam_pairs(length, grid, count)  # (length - 1,)
        phase = (np.arange(1, length) + grid.lead) % PHASE == 0  # (length - 1,)
        masks.append((seams, ~seams, ~seams & phase))
    stats = []
    for plane in probs:  # (H, W)
        horizontal = np.abs(np.diff(plane, axis=1))  # (H, W - 1)
        vertical = np.abs(np.diff(plane, axis=0))  # (H - 1, W)
        means = [
            float(
                np.nanmean(np.concatenate([horizontal[:, across].ravel(), vertical[down].ravel()]))
            )
            for across, down in zip(masks[0], masks[1], strict=True)
        ]
        stats.append((means[0], means[1], means[2]))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scene", type=Path, default=SCENE)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlaps", type=int, nargs="+", default=[64, 128, 0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/infer_seams"))
    parser.add_argument("--no-write", action="store_true", help="print, skip results.md")
    args = parser.parse_args()
    command = shlex.join(["python", *sys.argv])
    lines = [
        "| overlap (px) | class | seam pairs | seam diff | interior diff | seam / interior "
        f"| interior diff, pairs at the seams' phase (mod {PHASE}) | seam / that |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for overlap in args.overlaps:
        out = args.out / f"probabilities_overlap{overlap}.tif"
        infer_geotiff(
            args.model, args.scene, out, tile=args.tile, overlap=overlap, probabilities=True
        )
        with rasterio.open(out) as src:
            probs = src.read()  # (K, H, W) float32
            names = [*src.descriptions, "mean"]
        _, height, width = probs.shape
        grid = blend_grid(height, width, args.tile, overlap)
        seams = int(seam_pairs(width, grid, grid.cols).sum()) * height
        seams += int(seam_pairs(height, grid, grid.rows).sum()) * width
        stats = seam_statistics(probs, grid)
        stats.append(tuple(np.mean(stats, axis=0).tolist()))
        for name, (seam, inside, phased) in zip(names, stats, strict=True):
            lines.append(
                f"| {overlap} | {name} | {seams} | {seam:.4f} | {inside:.4f} | "
                f"{seam / inside:.2f} | {phased:.4f} | {seam / phased:.2f} |"
            )
    notes = [
        "",
        f"Command: `{command}` (model `{args.model}`, tile {args.tile}, real scene "
        f"`{args.scene.name}`, {width} x {height} px; float32 class probabilities). Seam "
        "pairs: neighbouring pixels with a tile start or end (from `blend_grid`) between "
        "them; interior: all other neighbouring pairs; the phase control keeps interior "
        f"pairs at the same position modulo {PHASE} px as the seams. Diff: mean "
        "|p(a) - p(b)| over pairs (horizontal and vertical).",
    ]
    markdown = "\n".join([*lines, *notes])
    print(markdown)
    if not args.no_write:
        write_section("infer-seams", markdown)


if __name__ == "__main__":
    main()
