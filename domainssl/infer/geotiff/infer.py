"""`domainssl infer MODEL_DIR scene.tif --out prediction.tif`: streamed, georeferenced
inference over a GeoTIFF of any size.

The output rows are computed top to bottom (`streaming.py`) and written in whole
block rows to a resumable partial file, moved into place when complete. With ``devices``
> 1 the rows are split into that many parts, each computed by its own process on its own
device (`row_parts.py`), then joined into the one output.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import torch

from domainssl.infer.geotiff.output import publish_output, write_embedding, write_rows
from domainssl.infer.geotiff.reader import READ_CACHE_MB
from domainssl.infer.geotiff.resumable import PartialRaster
from domainssl.infer.geotiff.row_parts import discard_parts, joined, run_parts
from domainssl.infer.geotiff.streaming import Plan, RowRun, RunOptions, plan_run
from domainssl.infer.runner import InferSummary, autocast_dtype, check_precision
from domainssl.models.parallel import require_devices


def write_output(
    plan: Plan, partial: PartialRaster, blocks: Iterator[np.ndarray], cog: bool, picture: bool
) -> list[Path]:
    """Stream encoded rows into ``partial`` and publish it (an embedding map with its PCA
    picture when ``picture``); the files written."""
    spec = plan.spec
    tags = {"task": spec.task, "model": str(plan.model_dir), "tile": plan.grid.tile,
            "stride": plan.grid.stride}  # fmt: skip
    with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB):  # GDAL's default: 5% of RAM
        if plan.kind == "embed":
            pca = partial.out.with_name(f"{partial.out.stem}_pca.tif") if picture else None
            write_embedding(partial, pca, plan.band_names, tags, blocks, cog)
            return [partial.out] + ([pca] if pca else [])
        complete = write_rows(partial, plan.band_names, tags, blocks)
        resampling = "nearest" if plan.kind == "labels" else "average"
        publish_output(partial, complete, cog, resampling)
        return [partial.out]


def infer_geotiff(
    model_dir: Path,
    source: Path,
    out: Path,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 16,
    probabilities: bool = False,
    device: str = "cpu",
    num_workers: int = 2,
    precision: str = "32-true",
    cog: bool = False,
    progress: bool = False,
    resume: bool = False,
    devices: int = 1,
    picture: bool = True,
) -> InferSummary:
    """Run the model of ``model_dir`` over the GeoTIFF ``source`` and write ``out``.

    Args:
        model_dir: a `domainssl transfer` folder (segment: a per-pixel map on the input's
            grid; classify: one pixel per tile step) or a pretrain run (an embedding map, one
            pixel per tile step, plus ``<out stem>_pca.tif``: its top 3 components as RGB).
        source: input GeoTIFF with the backbone's bands, in order.
        out: output GeoTIFF (deflate, 256 px tiles, the input's CRS), nodata where the
            input is nodata: 255 (65535 past 254 classes) for labels, NaN for floats.
        tile: tile side in px (default: the segment training tile, else the input size the
            backbone was pretrained on).
        overlap: px shared by neighbouring tiles (default: tile // 4 for segment, else 0).
        batch_size: tiles per forward pass.
        probabilities: segment / classify: per-class float32 probabilities, not labels.
        device: torch device of the model (``cuda``: with ``devices`` > 1, ``cuda:0``..).
        num_workers: DataLoader processes reading tiles (per device).
        precision: 32-true, 16-mixed (float16 autocast, CUDA only) or bf16-mixed.
        cog: lay the outputs out as cloud-optimized GeoTIFFs (with overviews).
        progress: show a tqdm bar (tiles/s, ETA).
        resume: go on from the rows an interrupted run with the same input, model and
            settings left on disk (``.<out name>.partial`` and its parts), instead of
            starting afresh.
        devices: processes the rows are split across, one device each (CUDA devices, or
            shares of the CPU cores); one output.
        picture: embeddings: also write the PCA picture.
    """
    start = time.monotonic()
    if devices < 1 or torch.device(device).type == "cuda":
        require_devices(devices)
    autocast = autocast_dtype(check_precision(precision), torch.device(device))
    plan = plan_run(model_dir, source, tile, overlap, probabilities, autocast)
    partial = PartialRaster(out, plan.profile, plan.key(), resume)
    options = RunOptions(device, batch_size, num_workers, precision, progress)
    if devices > 1:
        parts, tiles_run = run_parts(plan, out, partial.rows_done, options, devices, resume)
        outputs = write_output(plan, partial, joined(plan, out, parts), cog, picture)
        discard_parts(plan, out, parts)
    else:
        run = RowRun(plan, partial.rows_done, plan.rows, options)
        try:
            outputs = write_output(plan, partial, run.blocks, cog, picture)
        finally:
            run.close()
        tiles_run = run.runner.tiles_run
    seconds = time.monotonic() - start
    megapixels = plan.raster.height * plan.raster.width / 1e6
    return InferSummary(
        plan.spec.task, len(plan.grid), tiles_run, round(seconds, 3),
        megapixels / max(seconds, 1e-9), outputs,
    )  # fmt: skip
