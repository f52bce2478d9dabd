"""Re-tune the pathology views' additive HED stain jitter (``views.hed_bias``) on LC25000.

``views.hed_bias`` is in scikit-image >= 0.18 ``rgb2hed`` stain units. Before it was
defined so, the same number was added in natural-log optical density: the old default 0.05
equals 0.05 / ln(1e6) ~ 0.0036 in today's units (Tellez et al. 2018's 0.05, computed with an
old scikit-image), while modern re-implementations use 0.05 in today's units (13.8x stronger).

For each bias the pathology-views SimCLR run of ``pathology_quality.py`` pretrains for the
config's 10 epochs (same seed, no time budget, one run after another), then the same
logistic-regression probe on frozen pooled features is fit on the same fixed stratified
split (70/10/20, seed 0; L2 chosen on the validation part).

    python bench/hed_bias_tuning.py --data ../shared/data/lc25000_lung
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_table import ProbeTable
from report import write_section

import domainssl.methods  # noqa: F401  (registers the methods and view presets)
from domainssl.config import load_config
from domainssl.data.folder import ChipFolder, InMemoryChips
from domainssl.views.settings import PathologyViewsConfig

OLD_BIAS = 0.05 / -math.log(1e-6)  # the old default 0.05 (natural-log OD) in skimage units
DEFAULT_BIASES = [0.0036, 0.02, 0.05]


def describe(bias: float) -> str:
    """What a bias value corresponds to, for the table."""
    if math.isclose(bias, OLD_BIAS, rel_tol=0.02):
        return "before: the old default 0.05 in ln-OD (Tellez et al.'s value)"
    if math.isclose(bias, 0.05):
        return "current configs: 0.05 in today's skimage units (13.8x stronger)"
    return f"in between ({bias / OLD_BIAS:.1f}x the old strength)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--biases", type=float, nargs="+", default=DEFAULT_BIASES)
    parser.add_argument("--epochs", type=int, default=10, help="pretraining epochs per bias")
    parser.add_argument("--seed", type=int, default=0, help="trainer.seed of every run")
    parser.add_argument("--out", type=Path, default=Path("bench/out/hed_bias_tuning"))
    parser.add_argument("--section", default="hed-bias-tuning", help="results.md section")
    args = parser.parse_args()
    torch.manual_seed(0)
    wall_start = time.time()

    config = load_config("pathology", "simclr")
    assert isinstance(config.views, PathologyViewsConfig)
    size = config.data.sample_size
    chips = InMemoryChips(ChipFolder(args.data, size=size), num_workers=2)
    table = ProbeTable(chips.images, chips.labels.numpy(), args.out)

    labels: dict[float, str] = {}
    for bias in args.biases:
        label = labels[bias] = f"hed_bias={bias:g}"
        run_args = [
            *["--domain", "pathology", "--method", "simclr", "--data", str(args.data)],
            *["--set", "data.kind=chips"],  # resized patches, as pathology-quality
            *["--epochs", str(args.epochs)],
            *["--set", f"views.hed_bias={bias}", "--set", f"trainer.seed={args.seed}"],
        ]
        table.pretrain_and_probe(label, f"bias-{bias:g}", run_args)
    table.markdown()  # saves results.json next to the runs
    wall_s = round(time.time() - wall_start)

    lines = [
        "| bias (skimage units) | what it is | linear probe test accuracy | L2 (chosen on val) "
        "| pretrain s (incl. export load) |",
        "|---|---|---|---|---|",
    ]
    for bias in args.biases:
        row = table.rows[labels[bias]]
        lines.append(
            f"| {bias:g} | {describe(bias)} | {row['test_accuracy']:.4f} | {row['best_l2']} "
            f"| {row['pretrain_s']} |"
        )
    markdown = "\n".join(lines)
    print(markdown)
    print(f"wall time {wall_s} s", flush=True)
    if args.section:
        biases = " ".join(f"{b:g}" for b in args.biases)
        header = (
            f"## HED stain-jitter bias: linear probe on {args.data.name} ({len(chips)} patches "
            f"at {size} px, split 70/10/20 seed 0), simclr + pathology views, {args.epochs} "
            f"epochs per bias, seed {args.seed}, 2 CPU cores (shared), total {wall_s} s\n\n"
            f"Command: `python bench/hed_bias_tuning.py --data {args.data} --biases {biases}`\n"
        )
        write_section(args.section, header + "\n" + markdown)


if __name__ == "__main__":
    main()
