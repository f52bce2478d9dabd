"""Streamed GeoTIFF inference on large rasters: throughput and peak memory, side by side.

For each mosaic size (mirror-tiled copies of a real Landsat-8 scene), each in its own
process so that its peak memory is its own:
  ours   `infer_geotiff` (DataLoader workers read windows, blended rows are written as
         they finish);
  naive  the whole raster read into memory, the same tile grid predicted batch by batch
         into a whole-image accumulator, argmax, one GeoTIFF written;
  model  the bare network on preprocessed real tiles held in memory (the forward rate),
         expressed as input Mpx/s for each size's tile grid.

    L8=../shared/data/geotiff/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF
    python bench/infer_speed.py --scene $L8 --sizes 10240 20480
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).parent))
from infer_common import (
    agreement,
    available_gb,
    build_mosaic,
    load_average,
    own_cpu_s,
    own_peak_mb,
    run_child,
)
from report import write_section

from domainssl.export import preprocess
from domainssl.infer.allocator import keep_freed_memory
from domainssl.infer.geotiff.infer import infer_geotiff
from domainssl.infer.models import load_network, read_model_spec
from domainssl.infer.tiles import blend_grid, blend_weights
from domainssl.io import atomic_write

SCENE = Path("../shared/data/geotiff/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF")
MODEL = Path("bench/out/landsat_segment/pretrained")


def run_ours(job: dict[str, Any]) -> dict[str, Any]:
    """`infer_geotiff` over the mosaic: wall seconds (model loading included)."""
    start = time.perf_counter()
    summary = infer_geotiff(
        Path(job["model"]), Path(job["mosaic"]), Path(job["out"]), tile=job["tile"],
        overlap=job["overlap"], batch_size=job["batch_size"], num_workers=job["workers"],
        devices=job.get("devices", 1),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tiles": summary.tiles, "model_tiles": summary.tiles_run}


def run_naive(job: dict[str, Any]) -> dict[str, Any]:
    """Whole raster in memory, tile loop into whole-image sums, argmax, one write.

    With ``max_tiles`` the loop stops after that many tiles (in whole grid rows); reading,
    the accumulators and the finish still cover the whole image, so the peak memory is the
    full run's and the full loop time is extrapolated from the tiles done.
    """
    model_dir, tile, batch_size = Path(job["model"]), job["tile"], job["batch_size"]
    spec = read_model_spec(model_dir)
    network = load_network(model_dir, spec)
    start = time.perf_counter()
    with rasterio.open(job["mosaic"]) as src:
        image = src.read()  # (C, H, W): the whole raster
        profile = src.profile
    read_s = time.perf_counter() - start
    channels, height, width = image.shape
    grid = blend_grid(height, width, tile, job["overlap"])
    window = blend_weights(tile)  # (T, T)
    # np.full writes every page now, as the full loop would (a cut-short run measures it too)
    sums = np.full((len(spec.band_names), height, width), 0.0, np.float32)  # (K, H, W)
    weights = np.full((height, width), 0.0, np.float32)  # (H, W)
    limit = job["max_tiles"] or len(grid)
    count = min(len(grid), max(1, limit // grid.cols) * grid.cols)
    loop_start = time.perf_counter()
    for first in range(0, count, batch_size):
        indices = range(first, min(first + batch_size, count))
        tiles = np.zeros((len(indices), channels, tile, tile), np.float32)  # (B, C, T, T)
        spans = []
        for slot, index in enumerate(indices):
            top, left = grid.origin(index)
            crop = image[:, top : top + tile, left : left + tile]  # (C, h, w), cut at the border
            tiles[slot, :, : crop.shape[1], : crop.shape[2]] = crop
            spans.append((top, left, crop.shape[1], crop.shape[2]))
        with torch.no_grad():
            probs = network(preprocess(spec.meta, torch.from_numpy(tiles))).numpy()  # (B, K, T, T)
        for (top, left, rows, cols), prob in zip(spans, probs, strict=True):
            sums[:, top : top + rows, left : left + cols] += (
                prob[:, :rows, :cols] * window[:rows, :cols]
            )
            weights[top : top + rows, left : left + cols] += window[:rows, :cols]
    loop_s = time.perf_counter() - loop_start
    finish_start = time.perf_counter()
    np.divide(sums, weights, out=sums, where=weights > 0)
    labels = sums.argmax(axis=0).astype(np.uint8)  # (H, W)
    profile.update(count=1, dtype="uint8", nodata=255, BIGTIFF="IF_SAFER")

    def write(path: Path) -> None:
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(labels[None])

    atomic_write(Path(job["out"]), write)
    finish_s = time.perf_counter() - finish_start
    full_loop_s = loop_s * len(grid) / count
    return {
        "seconds": read_s + full_loop_s + finish_s, "read_s": read_s, "loop_s": loop_s,
        "finish_s": finish_s, "tiles": len(grid), "model_tiles": len(grid), "tiles_run": count,
        "rows_final": height if count == len(grid) else count // grid.cols * grid.stride,
    }  # fmt: skip


def run_forward(job: dict[str, Any]) -> dict[str, Any]:
    """Tiles/s of the bare network on real, preprocessed tiles held in memory."""
    model_dir, tile, batch_size = Path(job["model"]), job["tile"], job["batch_size"]
    spec = read_model_spec(model_dir)
    network = load_network(model_dir, spec)
    rng = np.random.default_rng(0)
    with rasterio.open(job["mosaic"]) as src:
        corners = rng.integers(0, min(src.height, src.width) - tile, (job["tiles"], 2))
        raw = np.stack([src.read(window=Window(int(x), int(y), tile, tile)) for y, x in corners])
    inputs = preprocess(spec.meta, torch.from_numpy(raw.astype(np.float32)))  # (N, C, T, T)
    batches = len(inputs) // batch_size
    with torch.no_grad():
        network(inputs[:batch_size])  # warm-up
        start, cpu = time.perf_counter(), own_cpu_s()["self_cpu_s"]
        for step in range(job["batches"]):
            first = step % batches * batch_size
            network(inputs[first : first + batch_size])
    tiles = job["batches"] * batch_size
    return {
        "tiles_per_s": tiles / (time.perf_counter() - start),
        "cpu_per_tile_s": (own_cpu_s()["self_cpu_s"] - cpu) / tiles,
    }


def child(job: dict[str, Any]) -> None:
    """Run one measurement and print its JSON report (last stdout line)."""
    runners = {"ours": run_ours, "naive": run_naive, "forward": run_forward}
    keep_freed_memory()  # the allocator `infer_geotiff` sets for itself, for every run alike
    result = runners[job["kind"]](job)
    usage = own_peak_mb() | own_cpu_s() | {"torch_threads": torch.get_num_threads()}
    print(json.dumps(result | usage))


def naive_need_gb(side: int, channels: int, classes: int) -> float:
    """GB the naive baseline's arrays take at their peak: uint16 input, float32 sums and
    weights, the bool weight mask, and in the argmax over axis 0 numpy's contiguous copy of
    the sums, the int64 indices and the uint8 labels."""
    return side * side * (2 * channels + 4 * classes + 4 + 1 + 4 * classes + 8 + 1) / 1e9


def render(results: list[dict[str, Any]], notes: list[str]) -> str:
    """The results table (one block of rows per size) and its notes."""
    lines = [
        f"Mirror-tiled Landsat-8 mosaics, CPU: {os.cpu_count()} cores, torch threads "
        f"{results[0]['forward']['torch_threads']} in every process.",
        "",
        "| size (px) | tiles | run | tiles through the model | wall s | Mpx/s | % of the "
        "model-only rate on the tiles it ran | peak RSS main process (MB) | peak RSS summed "
        "over processes (MB) | peak PSS summed over processes (MB) | load 1 min, start / end |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        side, tiles, forward = row["side"], row["tiles"], row["forward"]
        size, model_mpx = f"{side} x {side}", forward["tiles_per_s"] * side * side / tiles / 1e6
        lines.append(
            f"| {size} | {tiles} | model-only forward (tiles in memory) | {tiles} | "
            f"{tiles / forward['tiles_per_s']:.0f} (equiv.) | {model_mpx:.3f} | 100% | "
            f"{forward['self_maxrss_mb']:.0f} | {forward['tree_rss_mb']:.0f} | "
            f"{forward['tree_pss_mb']:.0f} | {forward['load']} |"
        )
        for name, run in (("ours: `infer_geotiff`", row["ours"]), ("naive", row["naive"])):
            if run is None:
                lines.append(f"| {size} | {tiles} | naive: not run ({row['skip']}) |||||||||")
                continue
            mpx = side * side / 1e6 / run["seconds"]
            model_s = run["model_tiles"] / forward["tiles_per_s"]  # the bare network's time
            if run.get("tiles_run", tiles) < tiles:
                name += f" (loop timed on {run['tiles_run']} of {tiles} tiles, extrapolated)"
            lines.append(
                f"| {size} | {tiles} | {name} | {run['model_tiles']} | {run['seconds']:.0f} | "
                f"{mpx:.3f} | {100 * model_s / run['seconds']:.0f}% | "
                f"{run['self_maxrss_mb']:.0f} | {run['tree_rss_mb']:.0f} | "
                f"{run['tree_pss_mb']:.0f} | {run['load']} |"
            )
        rates = " and ".join(f"{rate:.2f}" for rate in forward["rates"])
        ours = row["ours"]
        notes.append(
            f"{side} px: model-only tiles/s before and after ours {rates}. CPU s per tile: "
            f"model-only forward {forward['cpu_per_tile_s']:.3f}; ours (whole run) "
            f"{ours['self_cpu_s'] / ours['model_tiles']:.3f} main + "
            f"{ours['children_cpu_s'] / ours['model_tiles']:.3f} readers, per tile through the "
            "model."
        )
        if (naive := row["naive"]) is not None:
            notes[-1] += (
                f" Naive: {naive['self_cpu_s'] / naive['tiles_run']:.3f} CPU s per tile; read "
                f"{naive['read_s']:.0f} s, loop {naive['loop_s']:.0f} s over "
                f"{naive['tiles_run']} tiles, finish {naive['finish_s']:.0f} s; its arrays "
                f"~{naive['need_gb']:.1f} GB; labels equal to ours on "
                f"{100 * row['agreement']:.3f}% of {naive['rows_final']} rows."
            )
    return "\n".join([*lines, "", *notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scene", type=Path, default=SCENE)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10240, 20480])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--forward-tiles", type=int, default=256)
    parser.add_argument("--forward-batches", type=int, default=24)
    parser.add_argument(
        "--naive-max-tiles", type=int, default=None, help="time the naive loop on this many tiles"
    )
    parser.add_argument("--naive-margin-gb", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/infer_speed"))
    parser.add_argument("--no-write", action="store_true", help="print, skip results.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    command = shlex.join(["python", *sys.argv])
    script, load_start = Path(__file__), load_average()
    mosaics = {side: build_mosaic(args.scene, side, args.out) for side in args.sizes}
    spec = read_model_spec(args.model)
    base = {"model": str(args.model), "tile": args.tile, "overlap": args.overlap,
            "batch_size": args.batch_size}  # fmt: skip
    results = []
    for side, mosaic in mosaics.items():
        job = base | {"mosaic": str(mosaic), "max_tiles": args.naive_max_tiles}
        tiles = len(blend_grid(side, side, args.tile, args.overlap))
        row: dict[str, Any] = {"side": side, "tiles": tiles, "naive": None}
        forward = {"kind": "forward", "tiles": args.forward_tiles, "batches": args.forward_batches}
        before = run_child(script, job | forward)
        ours_out, naive_out = args.out / f"ours_{side}.tif", args.out / f"naive_{side}.tif"
        row["ours"] = run_child(
            script, job | {"kind": "ours", "out": str(ours_out), "workers": args.workers}
        )
        print(f"{side} ours: {row['ours']}", flush=True)
        after = run_child(script, job | forward)
        row["forward"] = max((before, after), key=lambda run: run["self_maxrss_mb"]) | {
            "tiles_per_s": (before["tiles_per_s"] + after["tiles_per_s"]) / 2,
            "cpu_per_tile_s": (before["cpu_per_tile_s"] + after["cpu_per_tile_s"]) / 2,
            "rates": (before["tiles_per_s"], after["tiles_per_s"]),
            "load": f"{before['load']}, {after['load']}",
        }  # fmt: skip
        print(f"{side} forward: {row['forward']}", flush=True)
        need, free = naive_need_gb(side, spec.meta.in_chans, len(spec.band_names)), available_gb()
        if need + args.naive_margin_gb > free:
            row["skip"] = f"its arrays need {need:.1f} GB, {free:.1f} GB available"
        else:
            row["naive"] = run_child(script, job | {"kind": "naive", "out": str(naive_out)})
            row["naive"]["need_gb"] = need
            row["agreement"] = agreement(ours_out, naive_out, row["naive"]["rows_final"])
            print(f"{side} naive: {row['naive']}", flush=True)
        results.append(row)
    (args.out / "results.json").write_text(json.dumps(results))
    notes = [
        f"Command: `{command}` (model `{args.model}`, tile {args.tile}, overlap "
        f"{args.overlap}, batch {args.batch_size}, ours with {args.workers} reader workers).",
        "Torch threads: default in every measured process; ours' reader workers use 1 "
        f"each. Load average (1, 5, 15 min) at start {load_start}, at end {load_average()}.",
        f"Model-only: the bare network on {args.forward_tiles} real preprocessed tiles of "
        f"the same mosaic ({args.forward_batches} batches), run just before and just after "
        "ours (tiles/s: the mean of the two, scaled to input Mpx/s by the run's grid: "
        "image px / tiles; load: before, after).",
        "Memory: main process ru_maxrss (exact); the process tree (ours: main + reader "
        "workers) sampled from /proc, RSS every 0.25 s (pages shared by the forked workers "
        "counted in each) and PSS every 5 s (shared pages split; may miss a short peak).",
    ]
    markdown = render(results, notes)
    print(markdown)
    if not args.no_write:
        write_section("infer-speed", markdown)


if __name__ == "__main__":
    main()
