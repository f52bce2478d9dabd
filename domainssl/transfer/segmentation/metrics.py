"""Segmentation metrics from a confusion matrix: IoU, Dice, pixel accuracy (pure NumPy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(
    target: np.ndarray, prediction: np.ndarray, num_classes: int, ignore_index: int
) -> np.ndarray:
    """Counts (num_classes, num_classes), rows = true class, columns = predicted class.

    Pixels whose target is ``ignore_index`` are left out.
    """
    valid = target != ignore_index
    truth, predicted = target[valid].astype(np.int64), prediction[valid].astype(np.int64)
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"target holds classes outside [0, {num_classes}) besides ignore_index")
    flat = truth * num_classes + predicted
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> list[float | None]:
    """Element-wise ratio; None where the denominator is 0 (class neither true nor predicted)."""
    return [float(n / d) if d > 0 else None for n, d in zip(numerator, denominator, strict=True)]


def per_class_iou(confusion: np.ndarray) -> list[float | None]:
    """TP / (TP + FP + FN) per class; None for a class neither present nor predicted."""
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return _ratio(true_positive, union)


def per_class_dice(confusion: np.ndarray) -> list[float | None]:
    """2 TP / (2 TP + FP + FN) per class (the per-class F1); None as for IoU."""
    true_positive = np.diag(confusion)
    return _ratio(2 * true_positive, confusion.sum(0) + confusion.sum(1))


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Share of counted pixels whose class was predicted right (0 when none was counted)."""
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else 0.0


def mean_of_defined(values: list[float | None]) -> float:
    """Mean over the classes where a value is defined (0 when none is)."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else 0.0


@dataclass
class SegmentationMetrics:
    """Test-set scores; every field is JSON-serializable (None = class never seen)."""

    miou: float
    per_class_iou: list[float | None]
    per_class_dice: list[float | None]
    pixel_accuracy: float
    confusion: list[list[int]]
    """Rows = true class, columns = predicted class, ignored pixels excluded."""


def metrics_from_confusion(confusion: np.ndarray) -> SegmentationMetrics:
    """All scores of a confusion matrix (rows = truth, columns = prediction)."""
    iou = per_class_iou(confusion)
    return SegmentationMetrics(
        miou=mean_of_defined(iou),
        per_class_iou=iou,
        per_class_dice=per_class_dice(confusion),
        pixel_accuracy=pixel_accuracy(confusion),
        confusion=confusion.astype(int).tolist(),
    )
