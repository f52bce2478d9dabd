"""``manifest.csv``: one row per input item (done, failed or skipped, with its patch or tile
count, time and error), merged from the part each process appends to as it goes."""

from __future__ import annotations

import csv
import io
import os
import socket
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from domainssl.embed.claims import release, try_claim
from domainssl.io import atomic_write_text

MANIFEST = "manifest.csv"
WORK = ".embed"
"""Hidden folder of an output folder: locks, manifest parts, unfinished outputs."""

Status = Literal["done", "failed", "skipped"]


@dataclass
class ManifestRow:
    """What happened to one item."""

    item: str
    kind: str
    status: Status
    patches: int
    """Patches (slides) or tiles (scenes) embedded."""
    seconds: float
    error: str
    outputs: str
    """Output file names, ``;``-separated."""
    shard: str
    host: str
    finished: str


def row(item: str, kind: str, status: Status, patches: int, seconds: float, error: str,
        outputs: list[Path], shard: str) -> ManifestRow:  # fmt: skip
    """A row stamped with this host and the current time."""
    return ManifestRow(
        item, kind, status, patches, round(seconds, 3), error,
        ";".join(p.name for p in outputs), shard, socket.gethostname(),
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip


COLUMNS = [f.name for f in fields(ManifestRow)]


class ManifestPart:
    """This process's rows, appended and flushed one by one (a crash keeps those written)."""

    def __init__(self, out_dir: Path) -> None:
        parts = out_dir / WORK / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.csv"
        self.path = parts / name
        with self.path.open("w", newline="") as file:
            csv.writer(file).writerow(COLUMNS)

    def add(self, entry: ManifestRow) -> None:
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, COLUMNS).writerow(asdict(entry))
            file.flush()
            os.fsync(file.fileno())


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [r for r in csv.DictReader(file) if r.get("item")]


def merge(out_dir: Path) -> list[dict[str, str]]:
    """Fold every part (and the previous manifest) into ``manifest.csv``: per item the latest
    row, except that a ``skipped`` row never hides a ``done`` one. Returns the rows, sorted by
    item. Merges are serialised by a lock, so the last process to merge writes every row."""
    lock = out_dir / WORK / "manifest.lock"
    while not try_claim(lock):
        time.sleep(0.05)
    try:
        rows = _read(out_dir / MANIFEST)
        for part in sorted((out_dir / WORK / "parts").glob("*.csv")):
            rows += _read(part)
        latest: dict[str, dict[str, str]] = {}
        for entry in sorted(rows, key=lambda r: r["finished"]):
            before = latest.get(entry["item"])
            if before is None or not (entry["status"] == "skipped" and before["status"] == "done"):
                latest[entry["item"]] = entry
        merged = [latest[item] for item in sorted(latest)]
        atomic_write_text(out_dir / MANIFEST, _to_csv(merged))
    finally:
        release(lock)
    return merged


def _to_csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
