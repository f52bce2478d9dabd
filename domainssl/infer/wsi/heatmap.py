"""Whole-slide inference outputs: tile colours, the pyramidal heatmap TIFF, the thumbnail
overlay, and the per-tile CSV and QuPath GeoJSON, all staged under temporary names."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image

from domainssl.infer.models import Task
from domainssl.infer.pca import SAMPLE, PcaStretch

CELL = 16
"""Heatmap pixels per tile side at the base level."""
BLOCK = 256
"""Side (px) of the TIFF tiles; levels halve until the smaller side is below it."""
THUMBNAIL = 1024
"""Long side (px) of the overlay thumbnail."""
ALPHA = 0.5
"""Heatmap opacity over tissue in the thumbnail."""
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
        (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
        (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
    ],
    dtype=np.uint8,
)  # fmt: skip
"""Class colours: matplotlib's tab20 order (tab10, then its light variants), cycled past 20."""


@dataclass(frozen=True)
class TilePredictions:
    """Per-tile model outputs of a slide (tissue tiles only, grid order)."""

    task: Task
    names: list[str]
    """Classes (segment, classify) or embedding dimensions (embed)."""
    coords: np.ndarray  # (N, 2) level-0 (x, y) of the top-left corners
    size0: int
    """Tile side in level-0 pixels (the grid step)."""
    values: np.ndarray  # (N, K) class probabilities or (N, D) embeddings


def class_colours(task: Task, values: np.ndarray) -> np.ndarray:
    """uint8 colours (N, 3) of tile outputs (N, K).

    Classes: the argmax class's ``PALETTE`` colour scaled by its probability (darker = less
    sure; never white, which marks non-tissue). Embeddings: their top 3 principal components
    as RGB (``PcaStretch``, fitted on at most ``SAMPLE`` tiles).
    """
    if task == "embed":
        sample = np.random.default_rng(0).permutation(len(values))[:SAMPLE]
        return PcaStretch.fit(values[sample]).apply(values)
    best = values.argmax(axis=1)  # (N,)
    confidence = values[np.arange(len(values)), best][:, None]  # (N, 1)
    return np.round(PALETTE[best % len(PALETTE)] * confidence).astype(np.uint8)


def cell_image(
    predictions: TilePredictions, colours: np.ndarray, slide_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One pixel per grid cell over the whole slide ``(width, height)`` (level 0): colours
    (rows, cols, 3), white off tissue, and the tissue flags (rows, cols)."""
    step = predictions.size0
    rows, cols = -(-slide_size[1] // step), -(-slide_size[0] // step)
    image = np.full((rows, cols, 3), 255, np.uint8)
    tissue = np.zeros((rows, cols), bool)
    cells = predictions.coords[:, 1] // step, predictions.coords[:, 0] // step
    image[cells], tissue[cells] = colours, True
    return image, tissue


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 mean of an (h, w, 3) uint8 image, padded with white to even sides."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), constant_values=255)
    quads = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, 3)
    return ((quads.astype(np.uint16).sum(axis=(1, 3)) + 2) // 4).astype(np.uint8)


def _levels(cells: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
    """Pyramid levels as (source, repeat): each source pixel is a repeat x repeat block.

    The base level repeats every cell ``CELL`` times; each next level halves the repeat,
    then (at one pixel per cell) averages 2x2 pixels, until the smaller side < ``BLOCK``.
    """
    source, repeat = cells, CELL
    while True:
        yield source, repeat
        if min(source.shape[:2]) * repeat < BLOCK:
            return
        source, repeat = (source, repeat // 2) if repeat > 1 else (_halve(source), 1)


def _tiles(source: np.ndarray, repeat: int) -> Iterator[np.ndarray]:
    """Row-major (BLOCK, BLOCK, 3) tiles of the level ``source`` x ``repeat``, white-padded."""
    height, width = source.shape[0] * repeat, source.shape[1] * repeat
    for top in range(0, height, BLOCK):
        for left in range(0, width, BLOCK):
            ys = np.arange(top, min(top + BLOCK, height)) // repeat
            xs = np.arange(left, min(left + BLOCK, width)) // repeat
            tile = np.full((BLOCK, BLOCK, 3), 255, np.uint8)
            tile[: len(ys), : len(xs)] = source[ys[:, None], xs[None, :]]
            yield tile


def write_pyramid(path: Path, cells: np.ndarray, mpp: float, description: str) -> None:
    """Write the cell image as a tiled, deflate-compressed pyramidal RGB TIFF whose base
    level is at ``mpp`` µm/px (resolution tags in pixels per cm: OpenSlide's generic-tiff
    reader reports them as ``openslide.mpp-x/y``); levels are successive IFDs, tile by tile."""
    bigtiff = cells.size * CELL * CELL > 2**31
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for level, (source, repeat) in enumerate(_levels(cells)):
            per_cm = 1e4 / (mpp * 2**level)
            tif.write(
                _tiles(source, repeat),
                shape=(source.shape[0] * repeat, source.shape[1] * repeat, 3),
                dtype=np.uint8, tile=(BLOCK, BLOCK), photometric="rgb", compression="zlib",
                subfiletype=0 if level == 0 else 1, resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER", description=description if level == 0 else None,
                metadata=None,
            )  # fmt: skip


def write_thumbnail(
    path: Path, slide_path: Path, cells: np.ndarray, tissue: np.ndarray, step: int
) -> None:
    """PNG of the slide thumbnail (long side ``THUMBNAIL``) with the heatmap blended over
    tissue cells at opacity ``ALPHA``."""
    with openslide.OpenSlide(str(slide_path)) as slide:
        thumb = np.asarray(slide.get_thumbnail((THUMBNAIL, THUMBNAIL)).convert("RGB"))
        width, height = slide.dimensions
    rows = ((np.arange(thumb.shape[0]) + 0.5) * height / thumb.shape[0] // step).astype(int)
    cols = ((np.arange(thumb.shape[1]) + 0.5) * width / thumb.shape[1] // step).astype(int)
    colour = cells[rows[:, None], cols[None, :]].astype(np.float32)  # (h, w, 3)
    blend = (1 - ALPHA) * thumb + ALPHA * colour
    mask = tissue[rows[:, None], cols[None, :]][..., None]  # (h, w, 1)
    Image.fromarray(np.where(mask, np.round(blend), thumb).astype(np.uint8)).save(path, "PNG")


def _columns(predictions: TilePredictions) -> list[str]:
    """Value column names: ``p_<class>`` per class, or the embedding dimensions."""
    if predictions.task == "embed":
        return predictions.names
    return [f"p_{name}" for name in predictions.names]


def write_csv(path: Path, predictions: TilePredictions) -> None:
    """One row per tissue tile: x, y, width, height (level-0 px), then the predicted class
    and one probability column per class, or one column per embedding dimension."""
    classes = predictions.task != "embed"
    header = ["x", "y", "width", "height", *(["class"] if classes else []), *_columns(predictions)]
    size = predictions.size0
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for (x, y), values in zip(predictions.coords.tolist(), predictions.values, strict=True):
            label = [predictions.names[int(values.argmax())]] if classes else []
            writer.writerow([x, y, size, size, *label, *(f"{v:.7g}" for v in values)])


def write_geojson(path: Path, predictions: TilePredictions, colours: np.ndarray) -> None:
    """A FeatureCollection of QuPath detections: one square Polygon per tile in level-0
    pixels, classified by the argmax class (palette colour) with measurements ``p_<class>``;
    embeddings: the tile's PCA colour as the object colour, no classification or
    measurements (the CSV holds the vectors)."""
    size, classes = predictions.size0, predictions.task != "embed"
    columns = _columns(predictions)
    with path.open("w") as file:
        file.write('{"type": "FeatureCollection", "features": [')
        for index, ((x, y), values) in enumerate(
            zip(predictions.coords.tolist(), predictions.values.tolist(), strict=True)
        ):
            ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
            properties: dict[str, object] = {"objectType": "detection"}
            if classes:
                best = int(np.argmax(values))
                colour = PALETTE[best % len(PALETTE)].tolist()
                properties["classification"] = {"name": predictions.names[best], "color": colour}
                properties["measurements"] = dict(zip(columns, values, strict=True))
            else:
                properties["color"] = colours[index].tolist()
            feature = {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": properties,
            }
            file.write(("," if index else "") + "\n" + json.dumps(feature))
        file.write("\n]}\n")
