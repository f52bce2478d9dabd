"""A GeoTIFF inference run's plan, and its output rows computed in one process.

Tiles are read as windows by DataLoader workers, batched, normalized as in pretraining,
run, and assembled into finished output rows, top to bottom: memory is bounded by the tile
size, batch size and image width, never by the image height.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from affine import Affine
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from domainssl.errors import DomainSSLError
from domainssl.infer.geotiff.output import base_profile
from domainssl.infer.geotiff.reader import RasterInfo, TileReader
from domainssl.infer.geotiff.stitch import BlendedRows, CellRows, Rows, to_floats, to_labels
from domainssl.infer.models import ModelSpec, load_network, read_model_spec
from domainssl.infer.runner import TileRunner
from domainssl.infer.tiles import TileGrid, blend_grid, blend_weights, cell_grid

OutputKind = Literal["labels", "probabilities", "embed"]


@dataclass(frozen=True)
class Plan:
    """What a run computes: the model, the input, its tile grid and the output's layout."""

    model_dir: Path
    source: Path
    spec: ModelSpec
    raster: RasterInfo
    grid: TileGrid
    kind: OutputKind
    profile: dict[str, Any]
    """The output GeoTIFF's creation profile."""
    autocast: str = "None"
    """The dtype the network computes in under autocast (``runner.autocast_dtype``)."""

    @property
    def blended(self) -> bool:
        """Segmentation: overlapping tiles blended into a per-pixel map (else one cell per
        tile step)."""
        return self.spec.task == "segment"

    @property
    def rows(self) -> int:
        """Output rows."""
        return int(self.profile["height"])

    @property
    def band_names(self) -> list[str]:
        return ["class"] if self.kind == "labels" else self.spec.band_names

    @property
    def rows_per_tile_row(self) -> int:
        """Output rows each tile row finishes (the last one: what is left)."""
        return self.grid.stride if self.blended else 1

    def key(self) -> dict[str, Any]:
        """What the output depends on: a resumed run must match it exactly."""

        def identity(path: Path) -> list[Any]:
            stat = path.stat()
            return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]

        weights = sorted(self.model_dir.glob("*.safetensors"))
        grid = self.grid
        return {
            "source": identity(self.source), "model": [identity(w) for w in weights],
            "tile": grid.tile, "stride": grid.stride, "output": self.kind, "task": self.spec.task,
            "autocast": self.autocast,
        }  # fmt: skip


def plan_run(
    model_dir: Path,
    source: Path,
    tile: int | None,
    overlap: int | None,
    probabilities: bool,
    autocast: torch.dtype | None = None,
) -> Plan:
    """The plan of a run; a band-count mismatch fails here, before any work. ``autocast``:
    the dtype of mixed precision (None: float32)."""
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
    transform = raster.transform if segment else raster.transform * Affine.scale(grid.stride)
    height, width = (raster.height, raster.width) if segment else (grid.rows, grid.cols)
    profile = base_profile(height, width, raster.crs, transform)
    kind: OutputKind = (
        "embed" if spec.task == "embed" else "probabilities" if probabilities else "labels"
    )
    if kind == "labels":
        label_type = np.uint8 if len(spec.band_names) < 255 else np.uint16
        profile.update(count=1, dtype=label_type, nodata=np.iinfo(label_type).max)
    else:
        profile.update(count=len(spec.band_names), dtype="float32", nodata=np.nan)
    return Plan(model_dir, source, spec, raster, grid, kind, profile, str(autocast))


@dataclass(frozen=True)
class RunOptions:
    """How rows are computed (none of it changes the output)."""

    device: str = "cpu"
    batch_size: int = 16
    num_workers: int = 2
    precision: str = "32-true"
    """One of ``runner.PRECISIONS``."""
    progress: bool = False


def resume_point(grid: TileGrid, blended: bool, rows_done: int) -> tuple[int, int]:
    """(first tile row to run, output rows it re-emits that are already done) to go on
    from ``rows_done`` output rows: blended rows depend on every tile overlapping them, so
    the run restarts at the first tile row reaching past ``rows_done``."""
    if not blended:
        return rows_done, 0
    first = max(0, (rows_done - grid.tile) // grid.stride + 1)
    return first, rows_done - first * grid.stride


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
    """``rows`` without its first ``count`` rows (already done)."""
    for values, valid in rows:
        drop = min(count, valid.shape[0])
        count -= drop
        if drop < valid.shape[0]:
            yield values[:, drop:], valid[drop:]


class RowRun:
    """Output rows ``[first, last)`` of ``plan`` computed in this process, encoded as the
    output stores them (``blocks``): labels (1, n, W), or float32 (K, n, W) with NaN where
    the input is nodata. ``last`` is the output's end or a tile row's first output row.
    ``close()`` stops the DataLoader workers. ``part``: (index, count) of a part run by one
    of several processes, for its progress bar."""

    def __init__(
        self, plan: Plan, first: int, last: int, options: RunOptions, part: tuple[int, int] = (0, 1)
    ) -> None:
        grid = plan.grid
        first_tile, skip = resume_point(grid, plan.blended, first)
        last_tile = min(grid.rows, math.ceil(last / plan.rows_per_tile_row))
        raster = plan.raster
        stitcher: BlendedRows | CellRows = (
            BlendedRows(grid, raster.height, raster.width, len(plan.spec.band_names),
                        blend_weights(grid.tile))
            if plan.blended
            else CellRows(grid, raster.height, raster.width, len(plan.spec.band_names))
        )  # fmt: skip
        tiles = range(first_tile * grid.cols, last_tile * grid.cols)
        index, count = part
        description = plan.source.name + (f" (part {index + 1}/{count})" if count > 1 else "")
        self.bar = tqdm(
            total=len(tiles), unit="tile", desc=description, disable=not options.progress,
            position=index,
        )  # fmt: skip
        network = load_network(plan.model_dir, plan.spec)
        self.runner = TileRunner(
            network, plan.spec.meta, torch.device(options.device), options.precision, self.bar
        )
        loader = DataLoader(
            Subset(TileReader(raster, grid), tiles),
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            pin_memory=self.runner.device.type == "cuda",
        )
        self._rows = _skip_rows(_stream(loader, self.runner, stitcher), skip)
        self.blocks = encode(plan, self._rows)

    def close(self) -> None:
        self._rows.close()  # stops the DataLoader workers at once on an error or interrupt
        self.bar.close()


def encode(plan: Plan, rows: Iterator[Rows]) -> Iterator[np.ndarray]:
    """Finished rows as the output stores them."""
    if plan.kind == "labels":
        label_type = np.dtype(plan.profile["dtype"]).type
        return (to_labels(values, valid, label_type) for values, valid in rows)
    return (to_floats(values, valid) for values, valid in rows)
