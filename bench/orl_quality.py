"""Object-level SSL on EuroSAT: BYOL (random crops) vs BYOL (object-aware crops) vs ORL.

Same protocol as bench/eo_quality.py: each run pretrains on all chips unlabeled for the
same wall-clock budget (one after another), then a linear probe on frozen pooled features
is fit on the fixed stratified split (70/10/20, seed 0). Load averages (other jobs share
the CPU) are recorded at the start and end of each run.

    python bench/orl_quality.py --data ../shared/data/eurosat_rgb5 --max-time 00:08:00
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_table import ProbeTable
from report import write_section

from domainssl.data.folder import ChipFolder, InMemoryChips

PROPOSALS = ["views.proposal_method=grouping", "views.proposal_min_side=12"]
RUNS = {
    "byol-random": ("BYOL, random resized crops", ["--method", "byol"], []),
    "byol-object": (
        "BYOL, object-aware crops",
        ["--method", "byol"],
        ["views.crops=object_aware", *PROPOSALS],
    ),
    "orl": (
        "ORL (3 stages in the same budget)",
        ["--method", "orl"],
        ["method.orl_mine_images=1024"],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--max-time", default="00:08:00")
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--out", type=Path, default=Path("bench/out/orl_quality"))
    parser.add_argument("--section", default="orl-quality", help="results.md section ('' = none)")
    args = parser.parse_args()
    torch.manual_seed(0)
    chips = InMemoryChips(ChipFolder(args.data, size=64), num_workers=2)
    table = ProbeTable(chips.images, chips.labels.numpy(), args.out)
    loads = []
    for key in args.runs:
        label, method, sets = RUNS[key]
        run_args = [
            "--domain",
            "eo",
            *method,
            "--data",
            str(args.data),
            "--max-time",
            args.max_time,
        ]
        run_args += [f"--set={item}" for item in sets]
        before = os.getloadavg()
        table.pretrain_and_probe(
            f"domainssl {label}", f"{key}-{args.max_time.replace(':', '')}", run_args
        )
        after = os.getloadavg()
        loads.append(f"| {label} | {before[0]:.2f} | {after[0]:.2f} |")
        print(f"{key}: load average {before} -> {after}", flush=True)
    markdown = table.markdown()
    load_table = "\n".join(["| run | 1-min load at start | at end |", "|---|---|---|", *loads])
    print(markdown + "\n\n" + load_table)
    if args.section:
        header = (
            f"## Object-level SSL: linear probe on {args.data.name} ({len(chips)} chips, split "
            f"70/10/20 seed 0), budget {args.max_time} per run, 2 CPU cores\n\n"
            f"Command: `python bench/orl_quality.py --data {args.data} "
            f"--max-time {args.max_time}`\n"
        )
        write_section(args.section, header + "\n" + markdown + "\n\n" + load_table)


if __name__ == "__main__":
    main()
