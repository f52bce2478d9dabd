"""MoNuSeg label efficiency: DenseCL on the unlabeled non-test images vs random init,
fine-tuned on 1, 3 and all training images, over seeds (issue 18).

1. The images and masks are linked into the ``images/`` + ``masks/`` layout; the transfer's
   seeded split by image (seed 0: 21 train, 3 val, 6 test) fixes the test images.
2. DenseCL (pathology views) pretrains on native-resolution windows of the 24 train + val
   images, without their masks; the 6 test images are never seen before evaluation.
3. ``domainssl transfer --task segment --seeds N --label-fractions ... --compare-random``
   fine-tunes encoder + decoder for the same wall-clock budget per run, pretrained and random.
   ``--frozen-warmup S`` first trains the decoder on the frozen pretrained encoder for that
   share of each budget; ``--random-from DIR`` takes the random curve of an earlier sweep.

    python bench/monuseg_label_efficiency.py --images ../shared/data/monuseg/train/images \\
        --masks ../shared/data/monuseg/train/masks_binary
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from label_efficiency import table
from report import write_section
from transfer_segment import link_layout

from domainssl.run_report import read_curves, read_sessions
from domainssl.transfer.segmentation.data import load_segmentation_data

# A standard ResNet stem (stride 4) at 224 px: DenseCL's 7x7 dense grid, and fine-tuning at
# 256 px tiles costs a sixteenth of the small-input stem's full-resolution first stages.
PRETRAIN_SETTINGS = [
    "model.small_input=false", "data.sample_size=224", "views.crop_size=224",
]  # fmt: skip


def link_unlabeled_images(data: Path, folder: Path) -> int:
    """Links to the train + val images of the seed-0 split (no masks); their count."""
    split = load_segmentation_data(data, in_chans=3, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = split.train.pairs + split.val.pairs
    for pair in pairs:
        link = folder / pair.image.name
        if not link.is_symlink():
            link.symlink_to(pair.image.resolve())
    return len(pairs)


def pretrain(images: Path, out: Path, budget: str, batch_size: int) -> tuple[Path, float]:
    """DenseCL run folder and wall seconds (the run is reused when it already finished)."""
    run = out / "densecl"
    if read_sessions(run):
        return run, float("nan")
    settings = [arg for s in PRETRAIN_SETTINGS for arg in ("--set", s)]
    command = [
        sys.executable, "-m", "domainssl", "pretrain", "--domain", "pathology",
        "--method", "densecl", "--data", str(images), "--max-time", budget,
        "--batch-size", str(batch_size), "--accelerator", "cpu", *settings,
        "--out", str(out), "--name", run.name,
    ]  # fmt: skip
    start = time.time()
    with open(out / "densecl.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return run, time.time() - start


def sweep(args: argparse.Namespace, run: Path, data: Path) -> tuple[dict, float]:
    """The transfer sweep's metrics.json and wall seconds."""
    out = args.out / args.sweep_name
    random = ["--compare-random"] if args.random_from is None else [
        "--random-from", str(args.random_from)]  # fmt: skip
    command = [
        sys.executable, "-m", "domainssl", "transfer", str(run), "--task", "segment",
        "--data", str(data), "--protocol", "finetune", "--seeds", str(args.seeds),
        "--label-fractions", args.fractions, *random, "--tile", str(args.tile),
        "--batch-size", "8", "--max-time", args.finetune_time, "--accelerator", "cpu",
        "--frozen-warmup", str(args.frozen_warmup), "--out", str(out),
    ]  # fmt: skip
    start = time.time()
    subprocess.run(command, check=True)
    return json.loads((out / "metrics.json").read_text()), time.time() - start


def pretrain_facts(run: Path) -> str:
    """Steps, epochs, images/s and the last logged losses of the pretraining run."""
    session = read_sessions(run)[-1]
    losses = [value for _, value in read_curves(run)["train/loss"]]
    tail = ", ".join(f"{v:.2f}" for v in losses[-3:])
    return (f"{session['steps']} steps, {session['epochs']} epochs, "
            f"{session['images_per_second']} images/s, stopped by {session['stopped_by']}, "
            f"last losses {tail}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--pretrain-time", default="00:25:00")
    parser.add_argument("--pretrain-batch-size", type=int, default=32)
    parser.add_argument("--finetune-time", default="00:01:45")
    parser.add_argument("--fractions", default="0.05,0.15,1.0", help="1, 3, 21 of 21 images")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--frozen-warmup", type=float, default=0.0)
    parser.add_argument("--random-from", type=Path, help="an earlier sweep's random curve")
    parser.add_argument("--sweep-name", default="sweep")
    parser.add_argument("--section", default="monuseg-label-efficiency")
    parser.add_argument("--out", type=Path, default=Path("bench/out/monuseg_label_efficiency"))
    args = parser.parse_args()
    data = link_layout(args.images, args.masks, args.out / "data")
    unlabeled = link_unlabeled_images(data, args.out / "unlabeled")
    run, pretrain_s = pretrain(args.out / "unlabeled", args.out, args.pretrain_time,
                               args.pretrain_batch_size)  # fmt: skip
    metrics, sweep_s = sweep(args, run, data)
    took = "reused" if pretrain_s != pretrain_s else f"{pretrain_s / 60:.0f} min"  # NaN: reused
    warmup = (f"the pretrained encoder frozen for the first {args.frozen_warmup:.0%} of it, "
              if args.frozen_warmup else "")  # fmt: skip
    borrowed = (f" The random-init rows come from `{args.random_from}` (not retrained)."
                if args.random_from else "")  # fmt: skip
    parts = [
        f"## MoNuSeg label efficiency: DenseCL vs random init, fine-tuned on "
        f"{args.fractions} of the training images, {args.seeds} seeds, 2 CPU cores\n",
        f"Command: `python bench/monuseg_label_efficiency.py --images {args.images} --masks "
        f"{args.masks} --pretrain-time {args.pretrain_time} --finetune-time "
        f"{args.finetune_time} --fractions {args.fractions} --seeds {args.seeds} "
        f"--tile {args.tile}"
        + (f" --frozen-warmup {args.frozen_warmup}" if args.frozen_warmup else "")
        + (
            f" --random-from {args.random_from} --sweep-name {args.sweep_name} --section "
            f"{args.section}"
            if args.random_from
            else ""
        )
        + "`\n",
        f"Pretraining: DenseCL, pathology views, {' '.join(PRETRAIN_SETTINGS)}, batch "
        f"{args.pretrain_batch_size}, {args.pretrain_time} on {unlabeled} unlabeled images "
        f"({took}; {pretrain_facts(run)}).\n",
        f"Fine-tuning: encoder + decoder, {args.tile} px tiles, batch 8, {args.finetune_time} "
        f"per run, {warmup}random init at the decoder's rate throughout; test: the "
        f"{metrics['test_images']} fixed test images, whole, tiled ({sweep_s / 60:.0f} min for "
        f"the sweep).{borrowed}\n",
        table(metrics, "mIoU", "training images"),
    ]
    markdown = "\n".join(parts)
    print(markdown)
    write_section(args.section, markdown)


if __name__ == "__main__":
    main()
