"""Shared parts of the quality benchmarks: pretrain with the CLI, probe, tabulate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainssl.data.labeled import stratified_split
from domainssl.export import load_backbone
from domainssl.transfer.classification.probe import extract_features, linear_probe


class ProbeTable:
    """Linear-probe rows on one labeled set with a fixed split (70/10/20, seed 0)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, out: Path) -> None:
        self.images, self.labels, self.out = images, labels, out
        self.split = stratified_split(labels)
        self.rows: dict[str, dict[str, Any]] = {}
        out.mkdir(parents=True, exist_ok=True)

    def probe(
        self,
        name: str,
        backbone: torch.nn.Module,
        mean: list[float],
        std: list[float],
        **extra: object,
    ) -> None:
        """Probe frozen pooled features of ``backbone`` and record the row ``name``."""
        features = extract_features(backbone, self.images, mean, std)
        result = linear_probe(features, self.labels, self.split)
        self.rows[name] = {"test_accuracy": result.test_accuracy, "best_l2": result.best_l2}
        self.rows[name].update(extra)
        print(f"{name}: test accuracy {result.test_accuracy:.4f} (l2={result.best_l2})", flush=True)

    def pretrain_and_probe(self, label: str, run_name: str, args: list[str]) -> None:
        """Run ``domainssl pretrain ARGS --out OUT --name RUN_NAME``, then probe its export."""
        cli_args = ["pretrain", *args, "--out", str(self.out), "--name", run_name]
        command = [sys.executable, "-m", "domainssl", *cli_args]
        start = time.time()
        with open(self.out / f"{run_name}.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
        backbone, meta = load_backbone(self.out / run_name)
        seconds = round(time.time() - start)
        self.probe(label, backbone, meta.mean, meta.std, pretrain_s=seconds, cli_args=cli_args)

    def markdown(self) -> str:
        """The rows as a markdown table; also saved as results.json next to the runs."""
        (self.out / "results.json").write_text(json.dumps(self.rows, indent=2))
        table = ["| model | linear probe test accuracy | L2 (chosen on val) |", "|---|---|---|"]
        table += [
            f"| {name} | {row['test_accuracy']:.4f} | {row['best_l2']} |"
            for name, row in self.rows.items()
        ]
        return "\n".join(table)
