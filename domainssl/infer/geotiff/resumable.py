"""A resumable output GeoTIFF: written under a hidden name beside the final one, with a
JSON note of how many rows are safely on disk, and moved into place only when complete.

The file is created sparse (``SPARSE_OK``): blocks not yet written hold nothing, so a
resumed run writes each remaining block exactly once. Every ``interval_s`` seconds the
dataset is closed (GDAL flushes its blocks and directory), the note is replaced
atomically, and the file is reopened in update mode: a run killed at any moment leaves a
note that never claims more rows than the file holds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import rasterio
from rasterio.io import DatasetWriter

from domainssl.io import atomic_write_text

FLUSH_INTERVAL_S = 10.0
"""Seconds between flushes of a partial output to disk (each costs a close and reopen)."""


class PartialRaster:
    """The output ``out`` while it is being written.

    Args:
        out: the final path.
        profile: rasterio creation profile.
        key: what the rows depend on (input, model, settings); a note with another key is
            stale and the file is started afresh.
        resume: continue from the note's row count when the key matches.
        interval_s: seconds between flushes to disk and note updates (default
            ``FLUSH_INTERVAL_S``).
    """

    def __init__(
        self,
        out: Path,
        profile: dict[str, Any],
        key: dict[str, Any],
        resume: bool,
        interval_s: float | None = None,
    ) -> None:
        self.out, self.profile, self.key = out, profile, key
        self.interval_s = FLUSH_INTERVAL_S if interval_s is None else interval_s
        self.path = out.with_name(f".{out.name}.partial")
        self.note = out.with_name(f".{out.name}.progress.json")
        self.rows_done = self._rows_on_disk() if resume else 0
        self._last_flush = time.monotonic()

    def _rows_on_disk(self) -> int:
        """Rows a previous run finished with the same key (0 if none)."""
        if not (self.note.is_file() and self.path.is_file()):
            return 0
        note = json.loads(self.note.read_text())
        return int(note["rows"]) if note.get("key") == self.key else 0

    def open(self) -> DatasetWriter:
        """The dataset to write rows ``rows_done`` onwards into (a new file from row 0)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.rows_done:
            return rasterio.open(self.path, "r+")
        self.note.unlink(missing_ok=True)
        return rasterio.open(self.path, "w", **self.profile, SPARSE_OK=True)

    def written(self, dst: DatasetWriter, rows: int) -> DatasetWriter:
        """Record that rows up to ``rows`` are written; flush (reopening ``dst``) when due."""
        if time.monotonic() - self._last_flush < self.interval_s:
            return dst
        dst.close()
        self.record(rows)
        return rasterio.open(self.path, "r+")

    def record(self, rows: int) -> None:
        """Note that the closed file holds rows up to ``rows`` (a complete file too: a part
        kept until it is joined into the output)."""
        atomic_write_text(self.note, json.dumps({"key": self.key, "rows": rows}))
        self._last_flush = time.monotonic()

    def finish(self, dst: DatasetWriter) -> Path:
        """Close the complete file and forget the note; the file to publish."""
        dst.close()
        self.note.unlink(missing_ok=True)
        return self.path

    def discard(self) -> None:
        """Remove the file and its note (a finished or abandoned output)."""
        for path in (self.path, self.note):
            path.unlink(missing_ok=True)


def publish(partial: Path, out: Path) -> None:
    """Move the complete ``partial`` to ``out`` (an atomic rename)."""
    os.replace(partial, out)
