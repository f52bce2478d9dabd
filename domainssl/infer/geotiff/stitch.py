"""Tile outputs assembled into finished output rows, written in whole GeoTIFF block rows.

Memory is bounded by the tile size and the image width, never the image height: blended
segmentation keeps one tile row of sums, per-tile maps one row of cells, and the writer at
most one block row (plus one stride) of encoded output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from rasterio.io import DatasetWriter
from rasterio.windows import Window

from domainssl.infer.tiles import TileGrid

BLOCK = 256
"""Output GeoTIFF block side (px)."""
Rows = tuple[np.ndarray, np.ndarray]
"""Finished output rows: values (K, n, W) float32 and validity (n, W) bool."""


class BlendedRows:
    """Rolling sums of window-weighted tile outputs over the height of one tile row.

    Holds (K, tile, cover) sums and (tile, cover) weights and validity, where ``cover`` is
    the width the grid reaches. Once the last tile of grid row ``r`` is added, input rows
    ``[r * stride, (r + 1) * stride)`` are final (later tiles start lower): they leave as
    a block (sums / weights, cropped to the image) and the buffers shift up by ``stride``.
    Tiles must arrive in row-major order.
    """

    def __init__(
        self, grid: TileGrid, height: int, width: int, channels: int, window: np.ndarray
    ) -> None:
        self.grid, self.height, self.width, self.window = grid, height, width, window
        cover = (grid.cols - 1) * grid.stride + grid.tile
        self.sums = np.zeros((channels, grid.tile, cover), np.float32)  # (K, T, cover)
        self.weights = np.zeros((grid.tile, cover), np.float32)  # (T, cover)
        self.valid = np.zeros((grid.tile, cover), bool)  # (T, cover)

    def add(self, index: int, values: np.ndarray | None, valid: np.ndarray) -> Rows | None:
        """Blend tile ``index``'s outputs (K, T, T) (None: skipped) with validity (T, T);
        the rows it finishes, if any."""
        grid = self.grid
        row, col = grid.position(index)
        span = slice(col * grid.stride, col * grid.stride + grid.tile)
        if values is not None:
            self.sums[:, :, span] += values * self.window
            self.weights[:, span] += self.window
        self.valid[:, span] |= valid
        if col < grid.cols - 1:
            return None
        top = row * grid.stride
        count = self.height - top if row == grid.rows - 1 else grid.stride
        weights = self.weights[:count, : self.width]  # (n, W)
        blended = np.divide(
            self.sums[:, :count, : self.width],
            weights,
            out=np.zeros((len(self.sums), count, self.width), np.float32),
            where=weights > 0,  # only invalid pixels lack weight (their tiles were skipped)
        )  # (K, n, W)
        finished = self.valid[:count, : self.width].copy()  # (n, W)
        for buffer in (self.sums, self.weights, self.valid):
            buffer[..., : -grid.stride, :] = buffer[..., grid.stride :, :]
            buffer[..., -grid.stride :, :] = 0
        return blended, finished


class CellRows:
    """One output row of per-tile values, filled tile by tile (row-major order).

    A cell is valid when its tile ran and at least half of the cell's pixels inside the
    image are valid.
    """

    def __init__(self, grid: TileGrid, height: int, width: int, channels: int) -> None:
        self.grid, self.height, self.width = grid, height, width
        self.values = np.zeros((channels, 1, grid.cols), np.float32)  # (K, 1, cols)
        self.valid = np.zeros((1, grid.cols), bool)  # (1, cols)

    def add(self, index: int, values: np.ndarray | None, valid: np.ndarray) -> Rows | None:
        """Store tile ``index``'s vector (K,) (None: skipped) given its pixel validity
        (T, T); the finished row when this was the row's last tile."""
        grid = self.grid
        row, col = grid.position(index)
        rows = min(grid.stride, self.height - row * grid.stride)  # the cell inside the image
        cols = min(grid.stride, self.width - col * grid.stride)
        cell = valid[grid.lead : grid.lead + rows, grid.lead : grid.lead + cols]
        self.values[:, 0, col] = 0 if values is None else values
        self.valid[0, col] = values is not None and 2 * int(cell.sum()) >= cell.size
        if col < grid.cols - 1:
            return None
        return self.values.copy(), self.valid.copy()


def to_labels(values: np.ndarray, valid: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """Class labels (1, n, W) (argmax over K of (K, n, W)); invalid pixels get dtype's max."""
    labels = values.argmax(axis=0).astype(dtype)  # (n, W)
    labels[~valid] = np.iinfo(dtype).max
    return labels[None]


def to_floats(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Values (K, n, W) with NaN at invalid pixels."""
    return np.where(valid, values, np.float32(np.nan))


class RowBlockWriter:
    """Writes finished rows (bands, n, W) top-down to ``dst`` in whole ``BLOCK``-row
    windows, so each compressed tile is written once, never patched.

    Args:
        dst: the open output dataset.
        first_row: the output row the first rows given belong to (a resumed run).
        written: called after each write with the dataset and the rows on disk; returns
            the dataset to go on with (it may flush and reopen it).
    """

    def __init__(
        self,
        dst: DatasetWriter,
        first_row: int = 0,
        written: Callable[[DatasetWriter, int], DatasetWriter] | None = None,
    ) -> None:
        self.dst, self.written = dst, written
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.next_row = first_row

    def add(self, rows: np.ndarray) -> None:
        self.pending.append(rows)
        self.pending_rows += rows.shape[1]
        if self.pending_rows >= BLOCK:
            self._write(self.pending_rows // BLOCK * BLOCK)

    def close(self) -> DatasetWriter:
        """Write what is left (the last, partial block row); the dataset written to."""
        if self.pending_rows:
            self._write(self.pending_rows)
        return self.dst

    def _write(self, count: int) -> None:
        stacked = np.concatenate(self.pending, axis=1)  # (bands, pending, W)
        window = Window(0, self.next_row, stacked.shape[2], count)
        self.dst.write(stacked[:, :count], window=window)
        self.next_row += count
        rest = stacked[:, count:].copy()
        self.pending, self.pending_rows = ([rest] if rest.shape[1] else []), rest.shape[1]
        if self.written is not None:
            self.dst = self.written(self.dst, self.next_row)
