"""Negative cosine similarity of BYOL (Grill et al. 2020) and SimSiam (Chen & He 2021)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from domainssl.losses.precision import in_float32


class NegativeCosineLoss(nn.Module):
    """``2 - 2 cos(p, z)`` averaged over the batch; the target ``z`` gets no gradient.

    Args:
        reduction: ``mean`` over the batch, or ``none`` for one loss per sample (N,).
    """

    def __init__(self, reduction: Literal["mean", "none"] = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    @in_float32
    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if prediction.shape != target.shape or prediction.ndim != 2:
            raise ValueError(
                f"expected two (N, D) tensors of one shape, got {prediction.shape}, {target.shape}"
            )
        cosine = F.cosine_similarity(prediction, target.detach(), dim=1)
        loss = 2 - 2 * cosine  # (N,)
        return loss.mean() if self.reduction == "mean" else loss
