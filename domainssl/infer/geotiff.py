"""`domainssl infer MODEL_DIR scene.tif --out prediction.tif`: streamed, georeferenced
inference over a GeoTIFF of any size.

Tiles are read as windows by DataLoader workers, batched, normalized as in pretraining,
run, assembled into finished output rows and written in whole block rows: memory is
bounded by the tile size, batch size and image width, never by the image height.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, preprocess
from domainssl.infer.allocator import keep_freed_memory
from domainssl.infer.models import Task, load_network, read_model_spec
from domainssl.infer.output import base_profile, publish_output, write_embedding, write_rows
from domainssl.infer.partial import PartialRaster
from domainssl.infer.reader import READ_CACHE_MB, RasterInfo, TileReader
from domainssl.infer.stitch import BlendedRows, CellRows, Rows, to_floats, to_labels
from domainssl.infer.tiles import TileGrid, blend_grid, blend_weights, cell_grid
from domainssl.models.parallel import spread


@dataclass
class InferSummary:
    """What a run did."""

    task: Task
    tiles: int
    tiles_run: int
    """Tiles the model saw: tiles without a single valid input pixel are skipped."""
    seconds: float
    megapixels_per_second: float
    """Input pixels per second over the whole run (reading and writing included)."""
    outputs: list[Path]


class TileRunner:
    """Runs the network on the tiles of a batch that hold a valid pixel."""

    def __init__(
        self,
        network: nn.Module,
        meta: BackboneMeta,
        device: torch.device,
        amp: bool,
        bar: tqdm,
        devices: int = 1,
    ) -> None:
        self.network, self.meta, self.device = spread(network.to(device), devices), meta, device
        if device.type == "cpu":
            keep_freed_memory()  # activations reused, not page-faulted again every batch
        self.amp, self.bar, self.tiles_run = amp and device.type == "cuda", bar, 0

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor) -> list[np.ndarray | None]:
        """Outputs per tile of raw tiles (B, C, T, T) with validity (B, T, T); None: skipped."""
        ran = valid.flatten(1).any(dim=1)  # (B,)
        results: list[np.ndarray | None] = [None] * len(ran)
        if bool(ran.any()):
            inputs = preprocess(self.meta, images[ran].to(self.device, non_blocking=True))
            with torch.autocast(self.device.type, enabled=self.amp):
                outputs = self.network(inputs).float().cpu().numpy()  # (b, K[, T, T])
            for slot, output in zip(ran.nonzero()[:, 0].tolist(), outputs, strict=True):
                results[slot] = output
        self.tiles_run += int(ran.sum())
        self.bar.update(len(ran))
        return results


def _stream(
    loader: DataLoader, runner: TileRunner, stitcher: BlendedRows | CellRows
) -> Generator[Rows, None, None]:
    """Finished output rows, top to bottom, as the batches come."""
    for batch in loader:
        outputs = runner(batch["image"], batch["valid"])
        valid = batch["valid"].numpy()  # (B, T, T)
        for index, output, tile_valid in zip(batch["index"].tolist(), outputs, valid, strict=True):
            rows = stitcher.add(index, output, tile_valid)
            if rows is not None:
                yield rows


def _skip_rows(rows: Iterator[Rows], count: int) -> Generator[Rows, None, None]:
    """``rows`` without its first ``count`` rows (already on disk in a resumed run)."""
    for values, valid in rows:
        drop = min(count, valid.shape[0])
        count -= drop
        if drop < valid.shape[0]:
            yield values[:, drop:], valid[drop:]


def resume_point(grid: TileGrid, blended: bool, rows_done: int) -> tuple[int, int]:
    """(first tile row to run, output rows it re-emits that are already on disk) to go on
    from ``rows_done`` output rows: blended rows depend on every tile overlapping them, so
    the run restarts at the first tile row reaching past ``rows_done``."""
    if not blended:
        return rows_done, 0
    first = max(0, (rows_done - grid.tile) // grid.stride + 1)
    return first, rows_done - first * grid.stride


def run_key(model_dir: Path, source: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """What the output depends on: a resumed run must match it exactly."""

    def identity(path: Path) -> list[Any]:
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]

    weights = sorted(model_dir.glob("*.safetensors"))
    return {"source": identity(source), "model": [identity(w) for w in weights], **settings}


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
    amp: bool = False,
    cog: bool = False,
    progress: bool = False,
    resume: bool = False,
    devices: int = 1,
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
        device: torch device of the model.
        num_workers: DataLoader processes reading tiles.
        amp: mixed precision (CUDA only; ignored on CPU).
        cog: lay the outputs out as cloud-optimized GeoTIFFs (with overviews).
        progress: show a tqdm bar (tiles/s, ETA).
        resume: go on from the rows an interrupted run with the same input, model and
            settings left on disk (``.<out name>.partial``), instead of starting afresh.
        devices: CUDA devices each batch is split across (one process, one output).
    """
    start = time.monotonic()
    spec = read_model_spec(model_dir)
    raster = RasterInfo.of(source)
    if raster.count != spec.meta.in_chans:
        raise DomainSSLError(
            f"{source} has {raster.count} bands but the model in {model_dir} expects "
            f"{spec.meta.in_chans} ({', '.join(spec.meta.band_names)}): give an image with "
            "exactly those bands, in that order."
        )
    size = tile or spec.default_tile
    segment = spec.task == "segment"
    shared = overlap if overlap is not None else (size // 4 if segment else 0)
    grid = (blend_grid if segment else cell_grid)(raster.height, raster.width, size, shared)
    channels = len(spec.band_names)
    transform = raster.transform if segment else raster.transform * Affine.scale(grid.stride)
    height, width = (raster.height, raster.width) if segment else (grid.rows, grid.cols)
    profile = base_profile(height, width, raster.crs, transform)
    kind = "embed" if spec.task == "embed" else "probabilities" if probabilities else "labels"
    label_type = np.uint8 if channels < 255 else np.uint16
    if kind == "labels":
        profile.update(count=1, dtype=label_type, nodata=np.iinfo(label_type).max)
    else:
        profile.update(count=channels, dtype="float32", nodata=np.nan)
    settings = {"tile": size, "stride": grid.stride, "output": kind, "task": spec.task}
    partial = PartialRaster(out, profile, run_key(model_dir, source, settings), resume)
    first_row, skip = resume_point(grid, segment, partial.rows_done)
    stitcher: BlendedRows | CellRows = (
        BlendedRows(grid, raster.height, raster.width, channels, blend_weights(size))
        if segment
        else CellRows(grid, raster.height, raster.width, channels)
    )
    network = load_network(model_dir, spec)
    remaining = range(first_row * grid.cols, len(grid))
    bar = tqdm(total=len(remaining), unit="tile", desc=source.name, disable=not progress)
    runner = TileRunner(network, spec.meta, torch.device(device), amp, bar, devices)
    loader = DataLoader(
        Subset(TileReader(raster, grid), remaining),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=runner.device.type == "cuda",
    )
    rows = _skip_rows(_stream(loader, runner, stitcher), skip)
    tags = {"task": spec.task, "model": str(model_dir), "tile": size, "stride": grid.stride}
    outputs = [out]
    try:
        with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_MB):  # GDAL's default: 5% of RAM
            if kind == "embed":
                outputs.append(out.with_name(f"{out.stem}_pca.tif"))
                write_embedding(partial, outputs[1], spec.band_names, tags, rows, cog)
            elif kind == "probabilities":
                floats = (to_floats(values, valid) for values, valid in rows)
                complete = write_rows(partial, spec.band_names, tags, floats)
                publish_output(partial, complete, cog, "average")
            else:
                labels = (to_labels(values, valid, label_type) for values, valid in rows)
                complete = write_rows(partial, ["class"], tags, labels)
                publish_output(partial, complete, cog, "nearest")
    finally:
        rows.close()  # stops the DataLoader workers at once on an error or interrupt
        bar.close()
    seconds = time.monotonic() - start
    megapixels = raster.height * raster.width / 1e6
    return InferSummary(
        spec.task, len(grid), runner.tiles_run, round(seconds, 3),
        megapixels / max(seconds, 1e-9), outputs,
    )  # fmt: skip
