"""Segmentation transfer: a pretrained encoder vs random init, same split, same budget.

The labeled images and masks are linked into the ``images/`` + ``masks/`` layout that
``domainssl transfer --task segment`` reads; both runs fine-tune encoder + decoder for the
same wall-clock budget on the same seeded 70/10/20 split by image and are scored on every
whole test image, tile by tile.

    python bench/transfer_segment.py --run bench/out/pathology_quality/pathology-002000 \
        --images ../shared/data/monuseg/train/images \
        --masks ../shared/data/monuseg/train/masks_binary --max-time 00:06:00
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from domainssl.config import parse_duration
from domainssl.transfer.segmentation.data import load_segmentation_data
from domainssl.transfer.segmentation.training import SegmentTrainConfig
from domainssl.transfer.segmentation.transfer import SegmentSettings, transfer_segment

BASELINES: tuple[Literal["pretrained", "random"], ...] = ("pretrained", "random")


def link_layout(images: Path, masks: Path, root: Path) -> Path:
    """``root/images`` and ``root/masks`` as symlinks to the given folders."""
    root.mkdir(parents=True, exist_ok=True)
    for name, target in (("images", images), ("masks", masks)):
        link = root / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target.resolve(), target_is_directory=True)
    return root


def pretrain_on_training_images(data: Path, out: Path, name: str, budget: str) -> Path:
    """SimCLR with the pathology views on random windows (native resolution) of the images
    of the training split only; returns the run folder."""
    train = load_segmentation_data(data, in_chans=3).train.pairs
    images = out / f"{name}_train_images"
    images.mkdir(parents=True, exist_ok=True)
    for pair in train:
        link = images / pair.image.name
        if not link.is_symlink():
            link.symlink_to(pair.image.resolve())
    run = out / f"{name}-scene-simclr"
    command = [
        sys.executable, "-m", "domainssl", "pretrain", "--domain", "pathology", "--data",
        str(images), "--set", "data.kind=scenes", "--max-time", budget, "--epochs", "1000",
        "--out", str(out), "--name", run.name,
    ]  # fmt: skip
    with open(out / f"{run.name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, help="pretrain run (or use --pretrain-time)")
    parser.add_argument(
        "--pretrain-time",
        help="pretrain SimCLR (pathology views) on windows of the training images instead",
    )
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--max-time", default="00:06:00")
    parser.add_argument("--name", default="monuseg")
    parser.add_argument("--out", type=Path, default=Path("bench/out/transfer_segment"))
    args = parser.parse_args()
    data = link_layout(args.images, args.masks, args.out / f"{args.name}_data")
    run = args.run or pretrain_on_training_images(data, args.out, args.name, args.pretrain_time)
    rows = []
    for baseline in BASELINES:
        training = SegmentTrainConfig(
            args.tile, epochs=100_000, max_time_s=parse_duration(args.max_time)
        )
        out = args.out / f"{args.name}-{baseline}"
        m = transfer_segment(run, data, out, SegmentSettings(baseline, training))
        iou, dice = m["per_class_iou"][-1], m["per_class_dice"][-1]
        print(f"{baseline}: mIoU {m['miou']:.4f}, class-1 IoU {iou}, Dice {dice}", flush=True)
        rows.append(
            f"| {baseline} | {iou:.4f} | {dice:.4f} | {m['miou']:.4f} | "
            f"{m['pixel_accuracy']:.4f} | {m['epochs_run']} |"
        )
    table = [
        "| encoder | foreground IoU | foreground Dice | mIoU | pixel accuracy | epochs run |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    source = f"--run {args.run}" if args.run else f"--pretrain-time {args.pretrain_time}"
    header = (
        f"## Segmentation transfer: {args.name} ({args.tile} px tiles, fine-tune "
        f"{args.max_time} each, seeded 70/10/20 split by image, 2 CPU cores)\n\n"
        f"Pretrained run: `{run}`.\n\n"
        f"Command: `python bench/transfer_segment.py {source} --images {args.images} "
        f"--masks {args.masks} --tile {args.tile} --max-time {args.max_time} --name {args.name}`\n"
    )
    markdown = "\n".join(table)
    print(markdown)
    write_section(f"transfer-segment-{args.name}", header + "\n" + markdown)


if __name__ == "__main__":
    main()
