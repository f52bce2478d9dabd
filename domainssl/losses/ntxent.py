"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (Chen et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainssl.losses.gather import gather_with_grad, world
from domainssl.losses.precision import in_float32


class NTXentLoss(nn.Module):
    """For 2N embeddings of N pairs, each one's positive is its pair; the other 2N-2 negatives.

    In distributed runs, negatives come from all processes (gathered with gradients) and
    each process averages the loss over its own anchors.

    Args:
        temperature: softmax temperature (0.1-0.5 typical; SimCLR used 0.5 at batch 256).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @in_float32
    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Loss of two views (N, D) each, row i of ``z0`` paired with row i of ``z1``."""
        if z0.shape != z1.shape or z0.ndim != 2:
            raise ValueError(
                f"expected two (N, D) tensors of one shape, got {z0.shape}, {z1.shape}"
            )
        rank, _ = world()
        n = z0.shape[0]
        local = F.normalize(torch.cat([z0, z1]), dim=1)  # (2N, D)
        everyone = F.normalize(torch.cat([gather_with_grad(z0), gather_with_grad(z1)]), dim=1)
        total = everyone.shape[0] // 2  # pairs in the global batch
        logits = local @ everyone.T / self.temperature  # (2N, 2*total)
        own = torch.cat([torch.arange(n), torch.arange(n)]) + rank * n  # row index in a view
        first_view = torch.arange(2 * n) < n
        self_index = torch.where(first_view, own, own + total).to(z0.device)
        positive = torch.where(first_view, own + total, own).to(z0.device)
        logits[torch.arange(2 * n, device=z0.device), self_index] = float("-inf")
        return F.cross_entropy(logits, positive)
