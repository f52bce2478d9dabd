"""`domainssl infer MODEL_DIR slide.svs --out heatmap.tif`: tissue-only inference over a
whole-slide image into a pyramidal heatmap TIFF, a per-tile CSV and GeoJSON, and a
thumbnail overlay.

Tissue tiles are found on a thumbnail, read at the model's training resolution by
DataLoader workers (one OpenSlide handle each), batched, normalized as in pretraining and
run; only one vector per tile is kept, never slide pixels. Every output is written under a
temporary name and moved into place at the end.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Generator
from pathlib import Path

import numpy as np
import openslide
import rasterio
import torch
from affine import Affine
from torch.utils.data import DataLoader
from tqdm import tqdm

from domainssl.data.pathology import SlideGrid, SlidePatches, build_grid
from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, check_resolution
from domainssl.infer.models import Task, load_network, read_model_spec
from domainssl.infer.runner import InferSummary, TileRunner
from domainssl.infer.wsi.heatmap import (
    CELL,
    TilePredictions,
    cell_image,
    class_colours,
    write_csv,
    write_geojson,
    write_pyramid,
    write_thumbnail,
)
from domainssl.io import staged

SUFFIXES = ("_tiles.csv", "_tiles.geojson", "_thumbnail.png")
"""Names of the outputs beside the heatmap: ``<out stem><suffix>``."""


def is_slide_source(path: Path) -> bool:
    """Whether ``path`` is a whole slide (run by `infer_slide`) rather than a GeoTIFF.

    A vendor format OpenSlide recognises (SVS, NDPI, MRXS, ...) is a slide. OpenSlide's
    "generic-tiff" also matches any tiled GeoTIFF, so such a file is a slide only when it is
    not georeferenced (no CRS, geotransform, GCPs or RPCs as rasterio reads it) and is
    pyramidal (more than one OpenSlide level) or 3-band uint8 (a scanned RGB image).
    """
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return False
    if vendor != "generic-tiff":
        return vendor is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as src:
                georeferenced = bool(
                    src.crs or src.transform != Affine.identity() or src.gcps[0] or src.rpcs
                )
                rgb = src.count == 3 and set(src.dtypes) == {"uint8"}
        except rasterio.errors.RasterioError:
            return True  # OpenSlide reads it, GDAL does not: not a GeoTIFF
    if georeferenced:
        return False
    try:
        with openslide.OpenSlide(str(path)) as slide:
            return slide.level_count > 1 or rgb
    except openslide.OpenSlideError:
        return rgb


def read_resolution(meta: BackboneMeta, model_dir: Path, mpp: float | None) -> float:
    """Microns per pixel to read tiles at: ``mpp`` if given (warning when it differs from
    the pretraining resolution), else the one recorded at pretraining."""
    chosen = mpp if mpp is not None else meta.mpp
    if chosen is None:
        raise DomainSSLError(
            f"The model in {model_dir} records no training resolution (microns per pixel): "
            "pass the resolution to read the slide at with --mpp (e.g. --mpp 0.5)."
        )
    if chosen <= 0:
        raise DomainSSLError(f"--mpp must be positive, not {chosen}.")
    check_resolution(meta, mpp, "Reading the slide")
    return chosen


def tissue_grid(
    source: Path, size: int, mpp: float, tissue_threshold: float, slide_mpp: float | None
) -> SlideGrid:
    """The tissue tile grid of ``source`` (clear errors for unreadable, unresolved or
    tissue-free slides)."""
    if not source.is_file():
        raise DomainSSLError(f"Slide {source} does not exist: check the path.")
    try:
        with openslide.OpenSlide(str(source)) as slide:
            recorded = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
        raise DomainSSLError(
            f"OpenSlide cannot open {source} ({err}): give a whole-slide image (SVS, NDPI, "
            "MRXS, SCN, pyramidal TIFF, ...)."
        ) from None
    if recorded is None and slide_mpp is None:
        raise DomainSSLError(
            f"{source} has no resolution metadata (microns per pixel): pass the resolution "
            "of its full-resolution level with --slide-mpp (e.g. --slide-mpp 0.25)."
        )
    grid = build_grid(source, size, mpp, tissue_threshold, slide_mpp)
    if not grid.coords:
        raise DomainSSLError(
            f"No tissue found in {source} at tissue threshold {tissue_threshold} (share of a "
            "tile that must be tissue): lower it (e.g. --tissue-threshold 0.2) if the "
            "tissue is faint or the tiles are large."
        )
    return grid


def _outputs(
    loader: DataLoader, runner: TileRunner, task: Task
) -> Generator[np.ndarray, None, None]:
    """One vector per tile (B, K) per batch, in grid order: class probabilities (classify),
    per-class means of the per-pixel probabilities over the tile (segment), or embeddings
    (embed)."""
    for batch in loader:
        images = batch["image"]  # (B, 3, T, T) uint8
        outputs = runner(images, torch.ones(len(images), 1, dtype=torch.bool))
        vectors = [
            o.mean(axis=(1, 2)) if task == "segment" else o for o in outputs if o is not None
        ]
        yield np.stack(vectors).astype(np.float32)


def infer_slide(
    model_dir: Path,
    source: Path,
    out: Path,
    tile: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    num_workers: int = 2,
    precision: str = "32-true",
    progress: bool = False,
    mpp: float | None = None,
    tissue_threshold: float = 0.5,
    slide_mpp: float | None = None,
) -> InferSummary:
    """Run the model of ``model_dir`` over the tissue tiles of the slide ``source``.

    Writes ``out`` (pyramidal RGB TIFF, one ``CELL`` px block per tile, white off tissue,
    resolution tags so that OpenSlide/QuPath overlay it on the slide), and beside it
    ``<stem>_tiles.csv``, ``<stem>_tiles.geojson`` (QuPath detections) and
    ``<stem>_thumbnail.png``. Classify: class probabilities per tile; segment: per-class
    mean of the per-pixel probabilities over the tile; both coloured by the argmax class
    (palette colour scaled by its probability). Embed (a pretrain run): the embedding per
    tile, coloured by its top 3 principal components.

    Args:
        model_dir: a `domainssl transfer` folder (classify, segment) or a pretrain run.
        source: a whole-slide image OpenSlide opens (3-band RGB).
        out: the heatmap TIFF; the other outputs share its folder and stem.
        tile: tile side in px at ``mpp`` (default: the model's, see ``ModelSpec``).
        batch_size: tiles per forward pass.
        device: torch device of the model.
        num_workers: DataLoader processes reading tiles.
        precision: 32-true, 16-mixed (float16 autocast, CUDA only) or bf16-mixed.
        progress: show a tqdm bar (tiles/s, ETA).
        mpp: microns per pixel to read tiles at (default: the pretraining resolution
            recorded in the model; required when it records none).
        tissue_threshold: share of a tile that must be tissue for it to run.
        slide_mpp: level-0 µm/px of a slide that records none.
    """
    start = time.monotonic()
    spec = read_model_spec(model_dir)
    if spec.meta.in_chans != 3:
        raise DomainSSLError(
            f"The model in {model_dir} expects {spec.meta.in_chans} bands "
            f"({', '.join(spec.meta.band_names)}) but whole slides are RGB (3 bands): use a "
            "model pretrained on 3-band RGB images."
        )
    read_mpp = read_resolution(spec.meta, model_dir, mpp)
    size = tile or spec.default_tile
    if size < 1:
        raise DomainSSLError(f"--tile must be a positive number of pixels, not {size}.")
    grid = tissue_grid(source, size, read_mpp, tissue_threshold, slide_mpp)
    network = load_network(model_dir, spec)
    bar = tqdm(total=len(grid.coords), unit="tile", desc=source.name, disable=not progress)
    runner = TileRunner(network, spec.meta, torch.device(device), precision, bar)
    loader = DataLoader(
        SlidePatches([grid], 0, random=False),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=runner.device.type == "cuda",
    )
    batches = _outputs(loader, runner, spec.task)
    try:
        values = np.concatenate(list(batches))  # (N, K)
    finally:
        batches.close()  # stops the DataLoader workers at once on an error or interrupt
        bar.close()
    predictions = TilePredictions(
        spec.task, spec.band_names, np.array(grid.coords), grid.level0_size, values
    )
    colours = class_colours(spec.task, values)  # (N, 3)
    with openslide.OpenSlide(str(source)) as slide:
        dimensions = slide.dimensions
    cells, tissue = cell_image(predictions, colours, dimensions)
    heatmap_mpp = grid.slide_mpp * grid.level0_size / CELL
    description = f"domainssl {spec.task} heatmap of {source.name} by {model_dir}"
    finals = [out, *(out.with_name(f"{out.stem}{s}") for s in SUFFIXES)]
    with staged(finals) as temps:
        write_pyramid(temps[0], cells, heatmap_mpp, description)
        write_csv(temps[1], predictions)
        write_geojson(temps[2], predictions, colours)
        write_thumbnail(temps[3], source, cells, tissue, grid.level0_size)
    seconds = time.monotonic() - start
    megapixels = runner.tiles_run * size * size / 1e6
    return InferSummary(
        spec.task, len(grid.coords), runner.tiles_run, round(seconds, 3),
        megapixels / max(seconds, 1e-9), finals,
    )  # fmt: skip
