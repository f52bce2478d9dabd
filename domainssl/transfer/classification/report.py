"""What a person reads first after a transfer: report.md and figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from domainssl.reports import markdown_table, save_figure, write_report

if TYPE_CHECKING:
    from domainssl.data.labeled import LabeledSet


def save_confusion_png(matrix: list[list[int]], classes: list[str], out: Path) -> None:
    """Row-normalized confusion matrix (true rows, predicted columns) with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(4.0, 0.5 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(side, side))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if shares[row, col] > 0.5 else "black"
        axes.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    save_figure(figure, out)


def write_classify_report(
    out: Path, metrics: dict[str, Any], data: LabeledSet, run_dir: Path, data_path: Path
) -> None:
    """report.md: headline metric, split, per-class scores, figures, next commands."""
    split = data.split
    how = "given by folders" if data.split_given else "stratified, seeded; see split.json"
    headline = (
        f"mAP **{metrics['mAP']:.4f}**, F1 micro {metrics['f1_micro']:.4f}"
        if data.multilabel
        else f"accuracy **{metrics['accuracy']:.4f}**, macro F1 {metrics['f1_macro']:.4f}"
    )
    per_class = metrics.get("per_class_f1") or metrics.get("per_class_ap") or {}
    column = "F1" if "per_class_f1" in metrics else "AP"
    facts = [
        f"Test: {headline} on {metrics['count']} images.",
        f"Backbone: `{run_dir}`"
        + (" (replaced by random init)" if metrics["baseline"] == "random" else ""),
        f"Data: `{data_path}`, {len(data.classes)} classes"
        + (", multi-label" if data.multilabel else ""),
        f"Split ({how}): {len(split.train)} train / {len(split.val)} val / {len(split.test)} test.",
        f"Validation score used for model selection: {metrics['validation_score']:.4f}.",
        f"Took {metrics['seconds']} s.",
    ]
    rows = [(name, "n/a" if v is None else f"{v:.4f}") for name, v in per_class.items()]
    figures = [("confusion matrix", "confusion.png")] if "confusion_matrix" in metrics else []
    write_report(
        out,
        f"Classification transfer: {metrics['protocol']} ({metrics['baseline']} backbone)",
        facts,
        markdown_table(["class", column], rows),
        figures,
        [f"domainssl infer {out.parent} large_image.tif --out classes.tif   # or a slide"],
    )
