"""Shared by the inference benchmarks: mirror-tiled mosaics of a real scene, and child
processes whose peak memory (their own and their workers') is measured while they run."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from domainssl.io import atomic_write

STRIP = 512
"""Rows of the mosaic built and written at a time."""


def mirror_index(count: int, length: int) -> np.ndarray:
    """Source index of each of ``count`` positions along an axis of ``length`` px that is
    tiled with mirrored copies (0, 1, .., n-1, n-1, .., 0, 0, 1, ..): no hard seams."""
    phase = np.arange(count) % (2 * length)
    return np.where(phase < length, phase, 2 * length - 1 - phase)


def build_mosaic(scene: Path, height: int, out_dir: Path, width: int | None = None) -> Path:
    """A ``height`` x ``width`` (default: square) tiled, deflate GeoTIFF of mirror-tiled copies
    of ``scene`` (its CRS, origin, pixel size and nodata), written strip by strip; reused if
    present."""
    width = width or height
    name = f"mosaic_{height}.tif" if width == height else f"mosaic_{height}x{width}.tif"
    path = out_dir / name
    if path.is_file():
        with rasterio.open(path) as done:
            if (done.height, done.width) == (height, width):
                return path
    with rasterio.open(scene) as src:
        source = src.read()  # (C, h, w): the scene itself is small
        profile = {
            "driver": "GTiff", "height": height, "width": width, "count": src.count,
            "dtype": src.dtypes[0], "crs": src.crs, "transform": src.transform,
            "nodata": src.nodata, "tiled": True, "blockxsize": 256, "blockysize": 256,
            "compress": "deflate", "BIGTIFF": "YES",
        }  # fmt: skip
    rows, cols = mirror_index(height, source.shape[1]), mirror_index(width, source.shape[2])

    def write(tmp: Path) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            for top in range(0, height, STRIP):
                strip = rows[top : top + STRIP]
                block = source[:, strip][:, :, cols]  # (C, n, width)
                dst.write(block, window=Window(0, top, width, len(strip)))

    atomic_write(path, write)
    return path


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids = [pid]
    for parent in pids:
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                pids += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return pids


PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def tree_rss_mb(pid: int) -> float:
    """Summed RSS (MB) of ``pid`` and its descendants (cheap: ``statm``; counts pages that
    forked workers share once per process)."""
    pages = 0
    for member in _tree(pid):
        try:
            pages += int(Path(f"/proc/{member}/statm").read_text().split()[1])
        except OSError:
            continue
    return pages * PAGE_MB


def tree_pss_mb(pid: int) -> float:
    """Summed PSS (MB) of ``pid`` and its descendants: shared pages split between the
    processes that map them (``smaps_rollup``: tens of ms per process, so read rarely)."""
    pss = 0
    for member in _tree(pid):
        try:
            lines = Path(f"/proc/{member}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        pss += sum(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
    return pss / 1024


class PeakSampler(threading.Thread):
    """Peak tree RSS, sampled every ``interval`` s, and peak tree PSS, sampled every
    ``pss_every`` samples, until ``stop()`` (kept light: it shares the measured cores)."""

    def __init__(self, pid: int, interval: float = 0.25, pss_every: int = 20) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_every = pid, interval, pss_every
        self.peak_rss = self.peak_pss = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        sample = 0
        while not self._done.is_set():
            self.peak_rss = max(self.peak_rss, tree_rss_mb(self.pid))
            if sample % self.pss_every == 0:
                self.peak_pss = max(self.peak_pss, tree_pss_mb(self.pid))
            sample += 1
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_child(script: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --child JOB_JSON`` in its own process; its JSON report (last stdout
    line) plus the peak summed RSS / PSS (MB) of it and its workers, sampled meanwhile, and
    the 1-minute load average at its start / end."""
    command = [sys.executable, str(script), "--child", json.dumps(job)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    sampler, load_start = PeakSampler(child.pid), os.getloadavg()[0]
    sampler.start()
    stdout, _ = child.communicate()
    sampler.stop()
    if child.returncode != 0:
        raise RuntimeError(f"child {job} failed with exit code {child.returncode}")
    report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return report | {
        "tree_rss_mb": sampler.peak_rss, "tree_pss_mb": sampler.peak_pss,
        "load": f"{load_start:.1f} / {os.getloadavg()[0]:.1f}",
    }  # fmt: skip


def own_peak_mb() -> dict[str, float]:
    """This process's peak RSS and that of its finished children (its workers), in MB."""
    return {
        "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def own_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of this process and of its finished children (its
    workers): a cost per tile that other jobs on the machine do not inflate much."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return {
        "self_cpu_s": own.ru_utime + own.ru_stime,
        "children_cpu_s": children.ru_utime + children.ru_stime,
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as text."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def available_gb() -> float:
    """MemAvailable of /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1e6
    return 0.0


def agreement(ours: Path, naive: Path, rows: int) -> float:
    """Share of equal labels in the first ``rows`` rows of two label rasters (by strips)."""
    same = total = 0
    with rasterio.open(ours) as a, rasterio.open(naive) as b:
        for top in range(0, rows, 1024):
            window = Window(0, top, a.width, min(1024, rows - top))
            same += int((a.read(1, window=window) == b.read(1, window=window)).sum())
            total += window.height * window.width
    return same / max(total, 1)
