"""`domainssl infer MODEL_DIR scene.tif --out prediction.tif`: streamed, georeferenced
inference over a GeoTIFF of any size.

Tiles are read as windows by DataLoader workers, batched, normalized as in pretraining,
run, assembled into finished output rows and written in whole block rows: memory is
bounded by the tile size, batch size and image width, never by the image height.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, preprocess
from domainssl.infer.models import Task, load_network, read_model_spec
from domainssl.infer.output import base_profile, write_embedding, write_output, write_rows
from domainssl.infer.reader import RasterInfo, TileReader
from domainssl.infer.stitch import BlendedRows, CellRows, Rows, to_floats, to_labels
from domainssl.infer.tiles import blend_grid, blend_weights, cell_grid


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
        self, network: nn.Module, meta: BackboneMeta, device: torch.device, amp: bool, bar: tqdm
    ) -> None:
        self.network, self.meta, self.device = network.to(device), meta, device
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
    stitcher: BlendedRows | CellRows = (
        BlendedRows(grid, raster.height, raster.width, channels, blend_weights(size))
        if segment
        else CellRows(grid, raster.height, raster.width, channels)
    )
    network = load_network(model_dir, spec)
    bar = tqdm(total=len(grid), unit="tile", desc=source.name, disable=not progress)
    runner = TileRunner(network, spec.meta, torch.device(device), amp, bar)
    loader = DataLoader(
        TileReader(raster, grid),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=runner.device.type == "cuda",
    )
    rows = _stream(loader, runner, stitcher)
    transform = raster.transform if segment else raster.transform * Affine.scale(grid.stride)
    height, width = (raster.height, raster.width) if segment else (grid.rows, grid.cols)
    profile = base_profile(height, width, raster.crs, transform)
    tags = {"task": spec.task, "model": str(model_dir), "tile": size, "stride": grid.stride}
    outputs = [out]
    try:
        if spec.task == "embed":
            outputs.append(out.with_name(f"{out.stem}_pca.tif"))
            write_embedding(out, outputs[1], profile, spec.band_names, tags, rows, cog)
        elif probabilities:
            profile.update(count=channels, dtype="float32", nodata=np.nan)
            floats = (to_floats(values, valid) for values, valid in rows)
            write_output(
                out, lambda path: write_rows(path, profile, spec.band_names, tags, floats),
                cog, "average",
            )  # fmt: skip
        else:
            dtype = np.uint8 if channels < 255 else np.uint16
            profile.update(count=1, dtype=dtype, nodata=np.iinfo(dtype).max)
            labels = (to_labels(values, valid, dtype) for values, valid in rows)
            write_output(
                out, lambda path: write_rows(path, profile, ["class"], tags, labels),
                cog, "nearest",
            )  # fmt: skip
    finally:
        rows.close()  # stops the DataLoader workers at once on an error or interrupt
        bar.close()
    seconds = time.monotonic() - start
    megapixels = raster.height * raster.width / 1e6
    return InferSummary(
        spec.task, len(grid), runner.tiles_run, round(seconds, 3),
        megapixels / max(seconds, 1e-9), outputs,
    )  # fmt: skip
