"""Main-process memory of streamed inference over a run, with the real segmenter.

`infer_geotiff` (the `infer-speed` settings) over mirror-tiled mosaics of different
heights and widths, each run in its own process. Its resident memory and glibc's heap
(size, bytes in use) are sampled every second from inside the process, to tell growth with
image height, image width, run length and batch size apart.

    python bench/infer_memory_trace.py --runs 5120x5120 5120x20480 20480x5120 \
        20480x5120/4 20480x20480      # HEIGHTxWIDTH[/BATCH[/DEVICES]]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import infer_speed
from infer_common import build_mosaic, load_average, own_peak_mb, run_child
from report import write_section

MB = 2**20


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (all arenas summed)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_mb() -> tuple[float, float] | None:
    """(bytes glibc holds from the kernel for the heap, bytes of it in use), in MB; None where
    malloc is not glibc 2.33+."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return (info.arena + info.hblkhd) / MB, (info.uordblks + info.hblkhd) / MB


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Tracer(threading.Thread):
    """(seconds, RSS, heap size, heap in use) every ``interval`` s until ``stop()``."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, ...]] = []
        self._done, self._start = threading.Event(), time.monotonic()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            heap = heap_mb() or (0.0, 0.0)
            self.samples.append((time.monotonic() - self._start, rss_mb(), *heap))

    def stop(self) -> list[tuple[float, ...]]:
        self._done.set()
        self.join()
        return self.samples


def child(job: dict[str, Any]) -> None:
    """One `infer_geotiff` run, traced; prints its JSON report."""
    tracer = Tracer()
    tracer.start()
    result = infer_speed.run_ours(job)
    print(json.dumps(result | {"trace": tracer.stop()} | own_peak_mb()))


def summarize(run: dict[str, Any]) -> dict[str, float]:
    """RSS at fractions of the run, when it came within 2% of its peak, the heap's state."""
    trace = run["trace"]
    seconds, rss = [s[0] for s in trace], [s[1] for s in trace]
    peak = max(rss)
    settled = next(t for t, value in zip(seconds, rss, strict=True) if value >= 0.98 * peak)
    at = {q: rss[min(len(rss) - 1, int(q * len(rss)))] for q in (0.25, 0.5, 0.75)}
    return {
        "rss_25": at[0.25], "rss_50": at[0.5], "rss_75": at[0.75], "rss_end": rss[-1],
        "settled_s": settled, "heap_end": trace[-1][2], "heap_used_max": max(s[3] for s in trace),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", default=["5120x5120", "20480x5120"])
    parser.add_argument("--scene", type=Path, default=infer_speed.SCENE)
    parser.add_argument("--model", type=Path, default=infer_speed.MODEL)
    parser.add_argument("--out", type=Path, default=Path("bench/out/infer_speed"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    command, load_start = shlex.join(["python", *sys.argv]), load_average()
    rows, traces = [], {}
    for spec in args.runs:
        size, *given = str(spec).split("/")
        defaults = ["16", "1"]  # batch, processes
        batch, devices = [*given, *defaults[len(given) :]]
        height, width = (int(side) for side in size.split("x"))
        mosaic = build_mosaic(args.scene, height, args.out, width)
        job = {
            "model": str(args.model), "mosaic": str(mosaic), "tile": 256, "overlap": 64,
            "batch_size": int(batch), "workers": 2, "devices": int(devices),
            "out": str(args.out / f"trace_{height}x{width}.tif"),
        }  # fmt: skip
        run = run_child(Path(__file__), job)
        traces[spec], facts = run["trace"], summarize(run)
        print(spec, {k: v for k, v in run.items() if k != "trace"}, facts, flush=True)
        rows.append(
            f"| {height} x {width} | {batch} | {devices} | {run['tiles']} | "
            f"{run['seconds']:.0f} | {run['model_tiles'] / run['seconds']:.2f} | "
            f"{run['self_maxrss_mb']:.0f} | {run['tree_rss_mb']:.0f} / {run['tree_pss_mb']:.0f} | "
            f"{facts['rss_25']:.0f} / {facts['rss_50']:.0f} / "
            f"{facts['rss_75']:.0f} / {facts['rss_end']:.0f} | {facts['settled_s']:.0f} s "
            f"({100 * facts['settled_s'] / run['seconds']:.0f}%) | {facts['heap_end']:.0f} / "
            f"{facts['heap_used_max']:.0f} | {run['load']} |"
        )
    (args.out / "memory_trace.json").write_text(json.dumps(traces))
    write_section(
        "infer-memory-trace",
        "## Streamed inference with the real model: main-process memory over a run\n\n"
        f"Command: `{command}` (model `{args.model}`, tile 256, overlap 64, 2 reader "
        f"workers; load average at start {load_start}, at end {load_average()}). RSS and "
        "glibc's heap (`mallinfo2`, all arenas) sampled every second inside the process; "
        f"traces in `{args.out}/memory_trace.json`.\n\n"
        "| mosaic (H x W px) | batch | processes | tiles | wall s | tiles/s | peak RSS, main "
        "process (MB) | peak RSS / PSS summed over all processes (MB) | main RSS at 25% / "
        "50% / 75% / end of the run (MB) | main RSS within 2% of its peak from | main heap "
        "at the end: held / most in use (MB) | load 1 min, start / end |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows),
    )


if __name__ == "__main__":
    main()
