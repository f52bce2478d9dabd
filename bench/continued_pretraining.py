"""Continued pretraining, the point of ``--init``: adapt a model trained on one domain to
another for N minutes, against the init used as it is and a from-scratch run of the same N
minutes, by a linear probe on the new domain.

The init is a domainssl SimCLR run on EuroSAT (RGB satellite chips); the new domain is
LC25000 lung histology. The adaptation and the from-scratch run are the same method
(SimCLR, the pathology views and config) on the same unlabeled patches for the same wall
clock, one after another; only the start differs (``--init`` lowers the peak learning rate
to 0.1x and shortens the warmup, as it does by default; a second continued run keeps the
from-scratch learning rate and warmup).

    python bench/continued_pretraining.py --init bench/out/eo_quality_dino/simclr-002000 \\
        --data ../shared/data/lc25000_lung --max-time 00:10:00
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_table import ProbeTable
from report import write_section

import domainssl.methods  # noqa: F401  (registers the methods and view presets)
from domainssl.config import load_config
from domainssl.data.folder import ChipFolder, InMemoryChips
from domainssl.export import load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--init", type=Path, required=True, help="a finished pretrain run")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--max-time", default="00:10:00")
    parser.add_argument("--epochs", default="10", help="and at most this many epochs (as recorded)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/continued_pretraining"))
    parser.add_argument("--section", default="continued-pretraining")
    args = parser.parse_args()
    torch.manual_seed(0)
    size = load_config("pathology", "simclr").data.sample_size
    chips = InMemoryChips(ChipFolder(args.data, size=size), num_workers=2)
    table = ProbeTable(chips.images, chips.labels.numpy(), args.out)
    backbone, meta = load_backbone(args.init)
    table.probe(f"the init as it is ({args.init.name}, {meta.domain})", backbone, meta.mean,
                meta.std)  # fmt: skip
    budget = args.max_time.replace(":", "")
    common = ["--domain", "pathology", "--method", "simclr", "--data", str(args.data),
              "--max-time", args.max_time, "--epochs", args.epochs,
              "--set", "data.kind=chips"]  # fmt: skip
    continued = [*common, "--init", str(args.init)]
    table.pretrain_and_probe(
        f"continued from the init, {args.max_time} (default: peak LR x0.1, warmup 0.01)",
        f"continued-{budget}", continued,
    )  # fmt: skip
    table.pretrain_and_probe(
        f"continued from the init, {args.max_time}, the full learning rate and warmup",
        f"continued-full-lr-{budget}",
        [*continued, "--set", "optimizer.init_lr_scale=1.0", "--set",
         "optimizer.init_warmup_fraction=0.05"],
    )  # fmt: skip
    table.pretrain_and_probe(f"from scratch, {args.max_time}", f"scratch-{budget}", common)
    markdown = table.markdown()
    print(markdown)
    header = (
        f"## Continued pretraining: EuroSAT SimCLR -> {args.data.name}, {args.max_time} of "
        f"SimCLR each, linear probe ({len(chips)} patches at {size} px, split 70/10/20 seed 0), "
        "2 CPU cores\n\n"
        f"Command: `python bench/continued_pretraining.py --init {args.init} --data {args.data} "
        f"--max-time {args.max_time} --epochs {args.epochs}` (whichever limit comes first)\n"
    )
    write_section(args.section, header + "\n" + markdown)


if __name__ == "__main__":
    main()
