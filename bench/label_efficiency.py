"""EuroSAT label efficiency: a pretrained run vs random init at 1%, 10% and 100% of the
training labels, over seeds, through `domainssl transfer --seeds --label-fractions
--compare-random` (linear probe, and optionally fine-tuning).

    python bench/label_efficiency.py --run bench/out/eo_quality_dino/simclr-002000 \\
        --data ../shared/data/eurosat_rgb5 --protocols linear
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section


def run_sweep(args: argparse.Namespace, protocol: str) -> tuple[dict, float]:
    """The transfer sweep of one protocol; its metrics.json and wall seconds."""
    out = args.out / f"{protocol}"
    command = [
        sys.executable, "-m", "domainssl", "transfer", str(args.run), "--data", str(args.data),
        "--protocol", protocol, "--seeds", str(args.seeds), "--label-fractions", args.fractions,
        "--compare-random", "--out", str(out), "--accelerator", "cpu", *budget_args(args),
    ]  # fmt: skip
    start = time.time()
    subprocess.run(command, check=True)
    return json.loads((out / "metrics.json").read_text()), time.time() - start


def budget_args(args: argparse.Namespace) -> list[str]:
    """A wall-clock budget per fine-tune (every share gets the same compute), else epochs
    (passes over the share: a 1% share then takes only a few steps)."""
    if args.finetune_time:
        return ["--max-time", args.finetune_time]
    return ["--epochs", str(args.epochs)]


def table(metrics: dict, metric: str = "accuracy", labels: str = "labels") -> str:
    """One row per init and fraction: labels used, mean ± 95% t interval, each seed."""
    rows = [f"| init | {labels} (share) | {metric}, mean ± 95% t | per seed |", "|---|---|---|---|"]
    for init, points in metrics["curves"].items():
        for p in points:
            interval = "" if p["low"] is None else f" ± {p['high'] - p['mean']:.4f}"
            seeds = ", ".join(f"{v:.4f}" for v in p["per_seed"])
            rows.append(f"| {init} | {p['labels']} ({p['fraction']:g}) | "
                        f"{p['mean']:.4f}{interval} | {seeds} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a pretraining run folder")
    parser.add_argument("--data", type=Path, required=True, help="labeled EuroSAT folder")
    parser.add_argument("--protocols", nargs="+", default=["linear"])
    parser.add_argument("--fractions", default="0.01,0.1,1.0")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs")
    parser.add_argument("--finetune-time", help="HH:MM:SS per fine-tune, instead of --epochs")
    parser.add_argument("--out", type=Path, default=Path("bench/out/label_efficiency"))
    parser.add_argument("--section", default="label-efficiency-eurosat")
    args = parser.parse_args()
    parts = [
        f"## Label efficiency on {args.data.name}: `{args.run.name}` vs random init, "
        f"{args.seeds} seeds, 2 CPU cores\n",
        f"Command: `python bench/label_efficiency.py --run {args.run} --data {args.data} "
        f"--protocols {' '.join(args.protocols)} --fractions {args.fractions} "
        f"--seeds {args.seeds} "
        + (
            f"--finetune-time {args.finetune_time}"
            if args.finetune_time
            else f"--epochs {args.epochs}"
        )
        + f" --section {args.section}`\n",
    ]
    for protocol in args.protocols:
        metrics, seconds = run_sweep(args, protocol)
        per_run = args.finetune_time or f"{args.epochs} epochs"
        budget = f", {per_run} per fine-tune" if protocol == "finetune" else ""
        parts += [f"### {protocol}{budget} ({seconds / 60:.0f} min)\n", table(metrics), ""]
    markdown = "\n".join(parts)
    print(markdown)
    write_section(args.section, markdown)


if __name__ == "__main__":
    main()
