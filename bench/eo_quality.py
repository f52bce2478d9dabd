"""EO pretraining quality: linear probe of our SimCLR/BYOL vs torchgeo SimCLRTask vs random init.

Each method pretrains on the unlabeled chips for the same wall-clock budget (methods run one
after another, never side by side), then a logistic-regression probe on frozen pooled
features is fit on a fixed stratified split of the same labeled set (70/10/20, seed 0; C
chosen on the validation part).

    python bench/eo_quality.py --data ../shared/data/eurosat_rgb5 --max-time 00:20:00
    python bench/eo_quality.py --data ../shared/data/eurosat_rgb5 --methods dino mae \
        --vit vit_tiny_patch16_224 --timm-kwargs '{"img_size": 64, "patch_size": 8}' \
        --set views.crop_size=64 --section eo-quality-vit

With ``--vit``, every run uses that ViT and the random-init row is that ViT.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_table import ProbeTable
from report import write_section
from torchgeo_anchor import train_torchgeo_simclr

from domainssl.config import parse_duration
from domainssl.data.folder import ChipFolder, InMemoryChips
from domainssl.data.stats import compute_band_stats
from domainssl.models.backbones import create_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--max-time", default="00:20:00")
    parser.add_argument("--epochs", type=int, help="instead of a time budget (tuning only)")
    parser.add_argument("--methods", nargs="+", default=["simclr", "byol", "torchgeo"])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("bench/out/eo_quality"))
    parser.add_argument("--section", default="eo-quality", help="results.md section ('' = none)")
    parser.add_argument("--vit", help="a timm ViT for every run and the random-init row")
    parser.add_argument("--timm-kwargs", default="{}", help="JSON: the ViT's img_size, ...")
    args = parser.parse_args()
    vit_kwargs = json.loads(args.timm_kwargs)
    torch.manual_seed(0)

    chips = InMemoryChips(ChipFolder(args.data, size=64), num_workers=2)
    table = ProbeTable(chips.images, chips.labels.numpy(), args.out)
    stats = compute_band_stats(chips, 4096, str(args.data))
    if args.vit:
        random_vit = create_backbone(args.vit, 3, False, {**vit_kwargs, "dynamic_img_size": True})
        table.probe(f"random init ({args.vit}, {vit_kwargs})", random_vit, stats.mean, stats.std)
        args.sets += [f"model.backbone={args.vit}", f"model.timm_kwargs={args.timm_kwargs}"]
    table.probe(
        "random init (our resnet18, small-input stem)",
        create_backbone("resnet18", 3, True),
        stats.mean,
        stats.std,
    )
    table.probe(
        "random init (timm resnet18, standard stem)",
        create_backbone("resnet18", 3, False),
        [0.0] * 3,
        [255.0] * 3,
    )
    budget = ["--epochs", str(args.epochs)] if args.epochs else ["--max-time", args.max_time]
    for method in [m for m in args.methods if m != "torchgeo"]:
        name = (
            f"{method}-{'e' + str(args.epochs) if args.epochs else args.max_time.replace(':', '')}"
        )
        run_args = ["--domain", "eo", "--method", method, "--data", str(args.data), *budget]
        run_args += [f"--set={item}" for item in args.sets]
        table.pretrain_and_probe(f"domainssl {method}", name, run_args)
    if "torchgeo" in args.methods:
        start = time.time()
        seconds = parse_duration(args.max_time) if not args.epochs else None
        if seconds is None:
            raise SystemExit("torchgeo runs on a time budget only: drop --epochs")
        backbone = train_torchgeo_simclr(args.data, max_time_s=seconds)
        table.probe(
            "torchgeo SimCLRTask (resnet18, 64 px, batch 128)",
            backbone,
            [0.0] * 3,
            [255.0] * 3,
            pretrain_s=round(time.time() - start),
        )

    markdown = table.markdown()
    print(markdown)
    if args.section:
        budget_text = f"{args.epochs} epochs" if args.epochs else args.max_time
        header = (
            f"## EO quality: linear probe on {args.data.name} "
            f"({len(chips)} chips, split 70/10/20 seed 0), budget "
            f"{budget_text} per method, 2 CPU cores\n\n"
            f"Command: `python bench/eo_quality.py --data {args.data} --max-time {args.max_time}"
            f" --methods {' '.join(args.methods)}"
            f"{' '.join([''] + [f'--set {s}' for s in args.sets])}`\n"
        )
        write_section(args.section, header + "\n" + markdown)


if __name__ == "__main__":
    main()
