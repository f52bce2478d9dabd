"""Pathology pretraining quality: pathology views vs EO-style views vs torchgeo vs random init.

Each model pretrains on the unlabeled H&E patches for the same wall-clock budget (one after
another, never side by side), then a logistic-regression probe on frozen pooled features is
fit on a fixed stratified split of the same labeled set (70/10/20, seed 0; L2 chosen on the
validation part). Patches are resized to the config's ``data.sample_size`` (96 px) for
pretraining and probing alike; torchgeo's SimCLRTask gets the same 96 px patches and the
same 48 px crop output as ours, so both spend their budget on equal-sized inputs.

    python bench/pathology_quality.py --data ../shared/data/lc25000_lung --max-time 00:20:00
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_table import ProbeTable
from report import write_section
from torchgeo_anchor import train_torchgeo_simclr

import domainssl.methods  # noqa: F401  (registers the methods and view presets)
from domainssl.config import load_config, parse_duration
from domainssl.data.folder import ChipFolder, InMemoryChips
from domainssl.data.stats import compute_band_stats
from domainssl.models.backbones import create_backbone
from domainssl.views.settings import CropViewsConfig

EO_VIEWS = (
    "views={preset: eo, crop_size: 48, crop_scale: [0.3, 1.0], blur_p: 0.2, "
    "blur_sigma: [0.1, 0.8]}"
)  # the pathology config's crops and blur, with the EO preset's colour operations
VARIANTS = {
    "pathology": ("domainssl simclr, pathology views (HED jitter)", []),
    "eo-views": ("domainssl simclr, EO/ImageNet-style views", ["--set", EO_VIEWS]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--max-time", default="00:20:00")
    parser.add_argument("--epochs", default="10", help="and at most this many epochs (as recorded)")
    parser.add_argument("--runs", nargs="+", default=[*VARIANTS, "torchgeo"])
    parser.add_argument("--out", type=Path, default=Path("bench/out/pathology_quality"))
    parser.add_argument("--section", default="pathology-quality", help="results.md section")
    args = parser.parse_args()
    torch.manual_seed(0)

    config = load_config("pathology", "simclr")
    assert isinstance(config.views, CropViewsConfig)
    size, crop = config.data.sample_size, config.views.crop_size
    chips = InMemoryChips(ChipFolder(args.data, size=size), num_workers=2)
    table = ProbeTable(chips.images, chips.labels.numpy(), args.out)
    stats = compute_band_stats(chips, 4096, str(args.data))
    table.probe(
        "random init (our resnet18)", create_backbone("resnet18", 3, True), stats.mean, stats.std
    )

    budget = args.max_time.replace(":", "")
    for run in [r for r in args.runs if r in VARIANTS]:
        label, extra = VARIANTS[run]
        resized = ["--set", "data.kind=chips"]  # resized patches, not native-resolution windows
        common = ["--domain", "pathology", "--method", "simclr", "--data", str(args.data), *resized]
        args_run = [*common, *extra, "--max-time", args.max_time, "--epochs", args.epochs]
        table.pretrain_and_probe(label, f"{run}-{budget}", args_run)
    if "torchgeo" in args.runs:
        start = time.time()
        backbone = train_torchgeo_simclr(
            chips.images, max_time_s=parse_duration(args.max_time), size=crop
        )
        label = f"torchgeo SimCLRTask (resnet18, {size} px patches, {crop} px crops, batch 128)"
        table.probe(label, backbone, [0.0] * 3, [255.0] * 3, pretrain_s=round(time.time() - start))

    markdown = table.markdown()
    print(markdown)
    if args.section:
        header = (
            f"## Pathology quality: linear probe on {args.data.name} "
            f"({len(chips)} patches at {size} px, split 70/10/20 seed 0), budget "
            f"{args.max_time} or {args.epochs} epochs per model, 2 CPU cores\n\n"
            f"Command: `python bench/pathology_quality.py --data {args.data} "
            f"--max-time {args.max_time} --epochs {args.epochs}`\n"
        )
        write_section(args.section, header + "\n" + markdown)


if __name__ == "__main__":
    main()
