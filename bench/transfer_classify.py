"""Classification transfer: linear, kNN and fine-tune on a pretrained run vs random init.

Every protocol runs twice through ``transfer_classify`` (what ``domainssl transfer`` runs):
on the pretrained backbone and on a randomly initialised one of the same architecture, with
the same seeded 70/10/20 split of the labeled set.

    python bench/transfer_classify.py --run bench/out/eo_quality/simclr-002000 \
        --data ../shared/data/eurosat_rgb5 --epochs 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from domainssl.transfer.classification.finetune import FinetuneConfig
from domainssl.transfer.classification.transfer import ClassifySettings, transfer_classify

PROTOCOLS: tuple[Literal["linear", "knn", "finetune"], ...] = ("linear", "knn", "finetune")
BASELINES: tuple[Literal["pretrained", "random"], ...] = ("pretrained", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/out/transfer_classify"))
    parser.add_argument("--section", default="transfer-classify")
    args = parser.parse_args()
    rows = []
    for protocol in PROTOCOLS:
        accuracy = {}
        for baseline in BASELINES:
            settings = ClassifySettings(protocol, baseline, finetune=FinetuneConfig(args.epochs))
            out = args.out / f"{protocol}-{baseline}"
            metrics = transfer_classify(args.run, args.data, out, settings)
            accuracy[baseline] = metrics
            print(f"{protocol} {baseline}: {metrics['accuracy']:.4f}", flush=True)
        pre, rnd = accuracy["pretrained"], accuracy["random"]
        rows.append(
            f"| {protocol} | {pre['accuracy']:.4f} | {pre['f1_macro']:.4f} | "
            f"{rnd['accuracy']:.4f} | {rnd['f1_macro']:.4f} | {pre['seconds']} / {rnd['seconds']} |"
        )
    table = [
        "| protocol | pretrained accuracy | pretrained macro F1 | random-init accuracy "
        "| random-init macro F1 | seconds (pre / random) |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    markdown = "\n".join(table)
    print(markdown)
    header = (
        f"## Classification transfer on {args.data.name} (split 70/10/20 seed 0, "
        f"fine-tune {args.epochs} epochs, 2 CPU cores)\n\n"
        f"Pretrained run: `{args.run}`.\n\n"
        f"Command: `python bench/transfer_classify.py --run {args.run} --data {args.data} "
        f"--epochs {args.epochs}`\n"
    )
    write_section(args.section, header + "\n" + markdown)


if __name__ == "__main__":
    main()
