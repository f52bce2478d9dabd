"""Frozen-feature evaluation: feature extraction and a logistic-regression linear probe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from domainssl.data.labeled import ProbeSplit

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
ScoreFn = Callable[[torch.Tensor, torch.Tensor], float]
"""Validation score (higher is better) of logits (N, K) against targets."""


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    batch_size: int = 256,
) -> np.ndarray:
    """Pooled features (N, D) of raw images (N, C, H, W), normalized with ``mean``/``std``."""
    backbone.eval()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    chunks = [
        backbone((images[i : i + batch_size].float() - m) / s)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks).numpy()


@dataclass
class ProbeResult:
    test_accuracy: float
    val_accuracy: float
    best_l2: float


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> torch.Tensor:
    """Multinomial logistic regression (weights incl. bias row) by full-batch L-BFGS.

    Minimizes mean cross-entropy + ``l2`` * ||W||^2 (sklearn's C corresponds to 1 / (2 N l2)).
    With multi-label targets ``y`` (N, K) of 0/1, one sigmoid per class (binary cross-entropy).
    """
    loss_of = F.binary_cross_entropy_with_logits if y.ndim == 2 else F.cross_entropy
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    weights = torch.zeros(x1.shape[1], classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights],
        lr=1,
        max_iter=300,
        history_size=20,
        tolerance_grad=1e-6,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_of(x1 @ weights, y.to(x.dtype) if y.ndim == 2 else y)
        loss = loss + l2 * (weights[:-1] ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach()


def logits_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose largest logit is the label."""
    return float((logits.argmax(dim=1) == labels).double().mean())


def linear_probe(features: np.ndarray, labels: np.ndarray, split: ProbeSplit) -> ProbeResult:
    """Logistic regression on standardized features; L2 strength chosen on validation."""
    x, y = torch.from_numpy(features).double(), torch.from_numpy(labels).long()
    layer, val_accuracy, best_l2 = fit_linear_head(x, y, split, logits_accuracy)
    with torch.no_grad():
        test_accuracy = logits_accuracy(layer(x[split.test]), y[split.test])
    return ProbeResult(test_accuracy, val_accuracy, best_l2)


def fit_linear_head(
    features: torch.Tensor, targets: torch.Tensor, split: ProbeSplit, score: ScoreFn
) -> tuple[nn.Linear, float, float]:
    """A linear classifier on frozen features: L2 strength chosen by ``score`` on the
    validation part, refit on train + val. Feature standardization is folded into the layer.

    Returns the layer (D -> K), the best validation score and its L2 strength.
    """
    x = features.double()
    mean, std = x[split.train].mean(0), x[split.train].std(0).clamp(min=1e-8)
    x = (x - mean) / std
    classes = targets.shape[1] if targets.ndim == 2 else int(targets.max()) + 1
    best = (-1.0, L2_GRID[0])
    for l2 in L2_GRID:
        weights = fit_logistic(x[split.train], targets[split.train], classes, l2)
        logits = x[split.val] @ weights[:-1] + weights[-1]
        best = max(best, (score(logits, targets[split.val]), l2))
    val_score, best_l2 = best
    train_val = np.concatenate([split.train, split.val])
    weights = fit_logistic(x[train_val], targets[train_val], classes, best_l2)
    layer = nn.Linear(len(mean), classes, dtype=features.dtype)
    with torch.no_grad():
        layer.weight.copy_((weights[:-1] / std[:, None]).T)
        layer.bias.copy_(weights[-1] - (mean / std) @ weights[:-1])
    return layer, val_score, best_l2
