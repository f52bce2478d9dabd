"""Peak memory of streamed inference vs image size, the model's cost taken out.

The same `infer_geotiff` pipeline (and the naive whole-raster baseline of
bench/infer_speed.py) with a negligible network (a fixed 1x1 convolution + softmax, 4
classes), so that what is measured is reading, blending and writing: the part of memory
and time that depends on the image. Each run in its own process.

    python bench/infer_memory.py --sizes 5120 20480    # mosaics built by infer_speed.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import infer_speed
from infer_common import build_mosaic, load_average, own_peak_mb, run_child
from report import write_section

from domainssl.infer.geotiff import streaming


class PixelNetwork(nn.Module):
    """4-class probabilities of each pixel alone: next to no compute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).softmax(dim=1)


def child(job: dict[str, Any]) -> None:
    """Run one job with the negligible network and print its JSON report."""
    network = PixelNetwork().eval()
    streaming.load_network = infer_speed.load_network = lambda model_dir, spec: network
    run = infer_speed.run_ours if job["kind"] == "ours" else infer_speed.run_naive
    report = run(job) | own_peak_mb()
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scene", type=Path, default=infer_speed.SCENE)
    parser.add_argument("--model", type=Path, default=infer_speed.MODEL)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5120, 20480])
    parser.add_argument("--out", type=Path, default=Path("bench/out/infer_speed"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    rows, start_load = [], load_average()
    for side in args.sizes:
        mosaic = build_mosaic(args.scene, side, args.out)
        for kind in ("ours", "naive"):
            job = {
                "kind": kind, "model": str(args.model), "mosaic": str(mosaic),
                "out": str(args.out / f"memory_{kind}_{side}.tif"), "tile": 256, "overlap": 64,
                "batch_size": 16, "workers": 2, "max_tiles": 0,
            }  # fmt: skip
            report = run_child(Path(__file__), job)
            print(side, kind, report, flush=True)
            workers = report["children_maxrss_mb"] if kind == "ours" else 0.0
            rows.append(
                f"| {side} x {side} | {kind} | {side * side / 1e6 / report['seconds']:.2f} | "
                f"{report['self_maxrss_mb']:.0f} | {workers:.0f} | {report['tree_rss_mb']:.0f} |"
            )
    command = "python bench/infer_memory.py " + shlex.join(sys.argv[1:])
    write_section(
        "infer-memory",
        "## Streamed inference: memory vs image size (negligible model)\n\n"
        f"Command: `{command}` (load average at start: {start_load}; end: {load_average()})\n\n"
        "| mosaic | run | Mpx/s | peak RSS, main process (MB) | peak RSS, one reader "
        "worker (MB) | peak summed RSS, process tree (MB) |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows),
    )


if __name__ == "__main__":
    main()
