"""Classification metrics: single-label (accuracy, F1, confusion) and multi-label (mAP, F1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
)


def score(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Model-selection score: accuracy, or mAP for multi-label targets (N, K)."""
    if targets.ndim == 2:
        return mean_average_precision(outputs.detach().float().numpy(), targets.numpy())
    return float((outputs.argmax(1) == targets).double().mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro average precision over the classes that have positives."""
    present = targets.sum(0) > 0
    return float(average_precision_score(targets[:, present], scores[:, present], average="macro"))


def classification_metrics(
    outputs: torch.Tensor, targets: torch.Tensor, classes: list[str]
) -> dict[str, Any]:
    """Metrics of class scores (N, K) against targets: index (N,) or multi-label 0/1 (N, K)."""
    scores, truth = outputs.detach().float().numpy(), targets.numpy()
    if truth.ndim == 2:
        predicted = (scores >= 0.5).astype(int)
        per_class_ap = [
            float(average_precision_score(truth[:, k], scores[:, k])) if truth[:, k].any() else None
            for k in range(len(classes))
        ]
        return {
            "mAP": mean_average_precision(scores, truth),
            "f1_micro": float(f1_score(truth, predicted, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "per_class_ap": dict(zip(classes, per_class_ap, strict=True)),
            "count": len(truth),
        }
    predicted = scores.argmax(1)
    labels = list(range(len(classes)))
    per_class = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "f1_macro": float(
            f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)
        ),
        "per_class_f1": dict(zip(classes, map(float, per_class), strict=True)),
        "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        "count": len(truth),
    }
