"""Several devices: the output rows split into contiguous parts, one process per part.

Each process runs its part's tile rows on its own device (``cuda:i``, or the CPU with its
share of the cores) and writes them to a hidden, resumable part file beside the output.
The parent then joins the parts, in order, into the one output. A blended part also runs
the tile row just above it (those tiles overlap its first rows): one extra tile row per
part. An interrupted run keeps what its parts wrote; ``resume`` goes on from there.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import torch.multiprocessing as mp
from rasterio.windows import Window

from domainssl.errors import DomainSSLError
from domainssl.infer.geotiff.output import write_rows
from domainssl.infer.geotiff.resumable import PartialRaster
from domainssl.infer.geotiff.stitch import BLOCK
from domainssl.infer.geotiff.streaming import Plan, RowRun, RunOptions

STOP_GRACE_S = 10.0
"""Seconds parts get to close their files after an error or interrupt elsewhere."""


@dataclass(frozen=True)
class Part:
    """Output rows ``[first, last)``, the ``index``-th of ``count`` parts."""

    index: int
    count: int
    first: int
    last: int

    def raster(self, plan: Plan, out: Path, resume: bool) -> PartialRaster:
        """This part's resumable file beside ``out``."""
        profile = plan.profile | {"height": self.last - self.first}
        key = plan.key() | {"part": [self.first, self.last]}
        name = out.with_name(f"{out.name}.part{self.index + 1}of{self.count}")
        return PartialRaster(name, profile, key, resume)


def split(plan: Plan, first: int, count: int) -> list[Part]:
    """Output rows ``[first, plan.rows)`` cut at tile-row boundaries into at most ``count``
    parts of about equal numbers of tile rows."""
    unit, tile_rows = plan.rows_per_tile_row, plan.grid.rows
    start = first // unit  # the tile row finishing output row ``first``
    cuts = sorted(
        {start + round(i * (tile_rows - start) / count) for i in range(1, count)}
        - {start, tile_rows}
    )
    bounds = [first, *(cut * unit for cut in cuts), plan.rows]
    return [
        Part(index, len(bounds) - 1, low, high)
        for index, (low, high) in enumerate(itertools.pairwise(bounds))
    ]


def _run_part(
    plan: Plan, part: Part, out: Path, options: RunOptions, resume: bool, tiles_run: Any
) -> None:
    """Process entry: compute ``part`` (what a previous run left of it when ``resume``)
    into its file, and record the tiles it ran in ``tiles_run[part.index]``."""
    device = options.device
    if device.startswith("cuda"):
        device = f"cuda:{part.index}"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // part.count))
    raster = part.raster(plan, out, resume)
    total = part.last - part.first
    if raster.rows_done < total:
        options = replace(options, device=device)
        first = part.first + raster.rows_done
        run = RowRun(plan, first, part.last, options, (part.index, part.count))
        try:
            write_rows(raster, plan.band_names, {}, run.blocks)
        finally:
            run.close()
        raster.record(total)
        tiles_run[part.index] = run.runner.tiles_run


def run_parts(
    plan: Plan, out: Path, first: int, options: RunOptions, devices: int, resume: bool
) -> tuple[list[Part], int]:
    """Compute output rows ``[first, plan.rows)`` in ``devices`` processes; the parts
    (complete files) and the tiles they ran."""
    parts = split(plan, first, devices)
    context = mp.get_context("spawn")
    tiles_run = context.Array("q", len(parts))
    processes = [
        context.Process(target=_run_part, args=(plan, part, out, options, resume, tiles_run))
        for part in parts
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    finally:
        for process in processes:
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.terminate()
                process.join()
    failed = [part.index + 1 for part, p in zip(parts, processes, strict=True) if p.exitcode]
    if failed:
        raise DomainSSLError(
            f"part(s) {failed} of {len(parts)} stopped with an error (printed above); fix it "
            "and rerun with --resume to go on from the rows written."
        )
    return parts, sum(tiles_run[:])


def joined(plan: Plan, out: Path, parts: list[Part]) -> Iterator[np.ndarray]:
    """The complete parts' rows, top to bottom, in ``BLOCK``-row blocks."""
    for part in parts:
        with rasterio.open(part.raster(plan, out, resume=False).path) as src:
            for top in range(0, src.height, BLOCK):
                yield src.read(window=Window(0, top, src.width, min(BLOCK, src.height - top)))


def discard_parts(plan: Plan, out: Path, parts: list[Part]) -> None:
    """Remove the parts' files (once joined into the output)."""
    for part in parts:
        part.raster(plan, out, resume=False).discard()
