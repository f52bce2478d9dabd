"""EO speed, side by side in one run: training step rate, pipeline overhead, window sampling.

1. Training step rate (images/s) of our SimCLR vs torchgeo's SimCLRTask on the same batch
   of real EuroSAT chips (views + forward + loss + backward + optimizer step, no Lightning
   loop for either).
2. Data pipeline overhead of our default SimCLR run: a full step (DataLoader batch + views
   + step) vs a step on pre-made view tensors.
3. Random-window sampling rate on a real scene: our SceneWindows vs torchgeo RasterDataset +
   RandomGeoSampler (same window size, count, batch size and worker count).

    python bench/eo_speed.py --data ../shared/data/eurosat_rgb5 \
        --scene ../shared/data/geotiff/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section
from torchgeo_anchor import load_chips, torchgeo_simclr_step_rate, torchgeo_window_timing

from domainssl.config import load_config
from domainssl.data.datamodule import (
    PretrainData,
    train_loader,
)
from domainssl.data.eo import SceneWindows
from domainssl.data.folder import ChipFolder, InMemoryChips
from domainssl.data.stats import compute_band_stats
from domainssl.methods.base import SSLMethod
from domainssl.methods.simclr import SimCLR


def build_method(sets: list[str], band_stats: tuple[list[float], list[float]]) -> SSLMethod:
    config = load_config("eo", "simclr", sets=sets)
    mean, std = band_stats
    return SimCLR(config, ["red", "green", "blue"], mean, std)


def step_rate(method: SSLMethod, images: torch.Tensor, steps: int, warmup: int = 2) -> float:
    """Images/s of views + forward + loss + backward + optimizer step on one batch."""
    optimizer = method.configure_optimizers()
    method.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        batch = method.on_after_batch_transfer({"image": images}, 0)
        optimizer.zero_grad()
        method.loss_and_embedding(*batch["views"])[0].backward()
        optimizer.step()
    return len(images) * steps / (time.perf_counter() - start)


def pipeline_overhead(method: SSLMethod, loader: DataLoader, steps: int) -> tuple[float, float]:
    """Seconds per step: full (loader + views + step) and on pre-made view tensors."""
    optimizer = method.configure_optimizers()
    method.train()
    batches = iter(loader)
    premade = method.on_after_batch_transfer(next(batches), 0)["views"]

    def train(views: tuple[torch.Tensor, torch.Tensor]) -> None:
        optimizer.zero_grad()
        method.loss_and_embedding(*views)[0].backward()
        optimizer.step()

    train(premade)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        train(method.on_after_batch_transfer(next(batches), 0)["views"])
    full = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for _ in range(steps):
        train(premade)
    return full, (time.perf_counter() - start) / steps


def our_window_rate(scene: Path, size: int, n: int, batch_size: int) -> float:
    windows = SceneWindows([scene], size=size, length=n, max_nodata_fraction=1.0)
    loader = DataLoader(windows, batch_size=batch_size, num_workers=0)
    start = time.perf_counter()
    count = sum(len(batch["image"]) for batch in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--scene", type=Path, action="append", required=True)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    lines = []

    chips = load_chips(args.data, max_images=args.batch, seed=0)  # (B, 3, 64, 64) uint8
    stats = compute_band_stats(InMemoryChips(ChipFolder(args.data, 64)), 2048, "bench")
    band_stats = (stats.mean, stats.std)
    ours = step_rate(build_method([], band_stats), chips, args.steps)
    equal = step_rate(
        build_method(["views.crop_size=64", "model.small_input=false"], band_stats),
        chips,
        args.steps,
    )
    theirs = torchgeo_simclr_step_rate(chips.float() / 255, steps=args.steps)
    lines += [
        f"### SimCLR training step rate, batch {args.batch} real 64 px chips, 2 CPU cores",
        "",
        "| trainer | images/s | vs torchgeo |",
        "|---|---|---|",
        f"| torchgeo SimCLRTask (resnet18, 64 px views) | {theirs:.1f} | 1.00x |",
        f"| domainssl SimCLR, defaults (32 px views, small-input stem) | {ours:.1f} | "
        f"{ours / theirs:.2f}x |",
        f"| domainssl SimCLR, 64 px views, standard stem (same compute as torchgeo) | "
        f"{equal:.1f} | {equal / theirs:.2f}x |",
        "",
    ]
    print("\n".join(lines), flush=True)

    config = load_config("eo", "simclr", overrides={"data.path": str(args.data)})
    dataset = InMemoryChips(ChipFolder(args.data, 64), num_workers=2)
    loader = train_loader(PretrainData(dataset, ["r", "g", "b"], stats, "bench", None), config.data)
    full, premade = pipeline_overhead(build_method([], band_stats), loader, args.steps)
    overhead = (full - premade) / premade
    lines += [
        f"### Data pipeline overhead (default SimCLR, batch {config.data.batch_size})",
        "",
        f"Full step (DataLoader + views + step): {full:.3f} s; step on pre-made views: "
        f"{premade:.3f} s; overhead **{overhead:.1%}**.",
        "",
        "### Random 64 px window sampling from a real scene (batch 32, 0 workers, 2048 windows)",
        "",
        "| scene | domainssl SceneWindows | torchgeo RasterDataset + RandomGeoSampler | ratio |",
        "|---|---|---|---|",
    ]
    for scene in args.scene:
        mine = our_window_rate(scene, 64, 2048, 32)
        anchor = torchgeo_window_timing(scene, size=64, n=2048, batch_size=32).windows_per_s
        lines.append(f"| {scene.name} | {mine:.0f}/s | {anchor:.0f}/s | {mine / anchor:.1f}x |")
    print("\n".join(lines[-len(args.scene) - 8 :]))
    command = "python bench/eo_speed.py --data " + str(args.data)
    command += "".join(f" --scene {s}" for s in args.scene)
    write_section("eo-speed", f"## EO speed\n\nCommand: `{command}`\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
