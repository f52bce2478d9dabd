"""The KoLeo regularizer (Sablayrolles et al. 2019; DINOv2, Oquab et al. 2024): spreads the
L2-normalized features of a batch by penalising each one's distance to its nearest
neighbour, ``-mean(log(min_j ||x_i - x_j|| + eps))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainssl.losses.precision import in_float32


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimate of a batch of features, negated."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    @in_float32
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` (B, D), B >= 2."""
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"expected (B >= 2, D) features, got {features.shape}")
        x = F.normalize(features, dim=1, eps=self.eps)
        sims = x @ x.T
        sims.fill_diagonal_(-2.0)  # below any cosine: a point is not its own neighbour
        nearest = sims.argmax(dim=1)
        distances = (x - x[nearest]).norm(dim=1)
        return -torch.log(distances + self.eps).mean()
