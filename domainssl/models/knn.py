"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KNNHead(nn.Module):
    """Cosine k-NN over a feature bank with votes weighted by ``exp(similarity / T)``.

    k = 20 and T = 0.07 follow Wu et al. (2018) and the kNN monitors of DINO / solo-learn.
    Returns per-class vote shares (B, K); for multi-label banks the share of each label.

    Args:
        bank: training features (N, D).
        targets: class indices (N,) or multi-label 0/1 rows (N, K).
        num_classes: K.
    """

    bank: torch.Tensor
    votes: torch.Tensor

    def __init__(
        self,
        bank: torch.Tensor,
        targets: torch.Tensor,
        num_classes: int,
        k: int = 20,
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        one_hot = F.one_hot(targets, num_classes) if targets.ndim == 1 else targets
        self.register_buffer("bank", F.normalize(bank.float(), dim=1))
        self.register_buffer("votes", one_hot.float())  # (N, K)
        self.k, self.temperature = min(k, len(bank)), temperature

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(features.float(), dim=1) @ self.bank.T  # (B, N)
        top, index = similarity.topk(self.k, dim=1)  # (B, k)
        weights = (top / self.temperature).exp()  # (B, k)
        scores = (weights[..., None] * self.votes[index]).sum(1)  # (B, K)
        return scores / weights.sum(1, keepdim=True)
