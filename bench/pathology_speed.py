"""Pathology speed, side by side in one run: patch streaming rate and pipeline overhead.

1. Patch streaming (patches/s, 224 px at 0.5 µm/px, tissue patches only) on real slides:
   the same seeded draw of tissue-weighted random patches read three ways:
   a naive loop of ``OpenSlide.read_region`` at level 0 per patch (resized to 224 px when
   the slide is finer than 0.5 µm/px), our ``SlidePatches`` in the main process, and our
   ``SlidePatches`` behind the training DataLoader (2 workers, batch 32).
2. Pipeline overhead of the default pathology SimCLR run on the same slides: a full step
   (DataLoader batch + views + step) vs a step on pre-made view tensors.

Slides without a recorded resolution are read as ``--slide-mpp`` µm/px (an assumption,
printed with the results).

    python bench/pathology_speed.py --slides ../shared/data/wsi --slide-mpp 0.25
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).parent))
from eo_speed import pipeline_overhead
from report import write_section

from domainssl.config import load_config
from domainssl.data.datamodule import prepare_pretrain_data, train_loader
from domainssl.data.pathology import SlideGrid, SlidePatches, list_slides, open_slide_grids
from domainssl.methods.simclr import SimCLR
from domainssl.views.settings import CropViewsConfig

PATCH, MPP = 224, 0.5


def naive_rate(grids: list[SlideGrid], draws: list[tuple[int, int]]) -> float:
    """Patches/s of a plain loop: ``read_region`` at level 0 per patch, resize to 224 px."""
    slides = [openslide.OpenSlide(g.path) for g in grids]
    start = time.perf_counter()
    for slide_index, patch in draws:
        grid = grids[slide_index]
        size0 = grid.level0_size
        region = slides[slide_index].read_region(grid.coords[patch], 0, (size0, size0))
        region = region.convert("RGB")
        if size0 != PATCH:
            region = region.resize((PATCH, PATCH), Image.Resampling.BILINEAR)
        torch.from_numpy(np.asarray(region).transpose(2, 0, 1).copy())
    return len(draws) / (time.perf_counter() - start)


def our_rate(patches: SlidePatches, indices: list[int], workers: int) -> float:
    """Patches/s of our dataset over the same draws, through a DataLoader (batch 32)."""
    loader = DataLoader(Subset(patches, indices), batch_size=32, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(batch["image"]) for batch in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slides", type=Path, required=True)
    parser.add_argument("--slide-mpp", type=float, default=0.25)
    parser.add_argument("--patches", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        grids = open_slide_grids(
            list_slides(args.slides), Path(tmp), PATCH, MPP, 0.5, args.slide_mpp
        )
    grids = [g for g in grids if g.coords]
    patches = SlidePatches(grids, 0, random=False)
    # uniform over all tissue patches = slides weighted by tissue area, as in pretraining
    indices = torch.randint(len(patches.index), (args.patches,)).tolist()
    draws = [patches.index[i] for i in indices]
    naive = naive_rate(grids, draws)
    ours_main = our_rate(patches, indices, workers=0)
    ours_workers = our_rate(patches, indices, workers=2)
    slides_text = ", ".join(
        f"{Path(g.path).name} ({g.slide_mpp} µm/px, {len(g.coords)} tissue patches)" for g in grids
    )
    lines = [
        f"### Patch streaming: {args.patches} random tissue patches, {PATCH} px at {MPP} µm/px",
        "",
        f"Slides: {slides_text}. A slide without a recorded resolution is taken as "
        f"{args.slide_mpp} µm/px.",
        "",
        "| reader | patches/s | vs naive |",
        "|---|---|---|",
        f"| naive loop: `OpenSlide.read_region` at level 0 per patch | {naive:.1f} | 1.00x |",
        f"| domainssl SlidePatches, main process | {ours_main:.1f} | {ours_main / naive:.2f}x |",
        f"| domainssl SlidePatches, DataLoader 2 workers | {ours_workers:.1f} | "
        f"{ours_workers / naive:.2f}x |",
        "",
    ]
    print("\n".join(lines), flush=True)

    for sets in ([], ["data.sample_size=224", "views.crop_size=224", "data.batch_size=32"]):
        overrides = {
            "data.path": str(args.slides),
            "data.slide_mpp": args.slide_mpp,
            "data.samples_per_epoch": 128 * (args.steps + 2),  # enough batches for the timing
        }
        config = load_config("pathology", "simclr", overrides=overrides, sets=sets)
        with tempfile.TemporaryDirectory() as tmp:
            data = prepare_pretrain_data(config.data, "pathology", Path(tmp))
        method = SimCLR(config, data.band_names, data.stats.mean, data.stats.std)
        assert isinstance(config.views, CropViewsConfig)
        full, premade = pipeline_overhead(method, train_loader(data, config.data), args.steps)
        lines += [
            f"### Pipeline overhead, pathology SimCLR: {config.data.sample_size} px samples, "
            f"{config.views.crop_size} px views, batch {config.data.batch_size}",
            "",
            "| step | seconds/step |",
            "|---|---|",
            f"| full (slide patches via DataLoader + views + train step) | {full:.3f} |",
            f"| train step on pre-made views | {premade:.3f} |",
            f"| overhead | {(full - premade) / premade:.1%} |",
            "",
        ]
        print("\n".join(lines[-8:]), flush=True)

    header = (
        "## Pathology speed (2 CPU cores)\n\n"
        f"Command: `python bench/pathology_speed.py --slides {args.slides} "
        f"--slide-mpp {args.slide_mpp}`\n\n"
    )
    write_section("pathology-speed", header + "\n".join(lines))


if __name__ == "__main__":
    main()
