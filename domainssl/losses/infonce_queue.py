"""InfoNCE against a queue of negative keys (MoCo, He et al. 2020; MoCo v2, Chen et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainssl.losses.precision import in_float32


class QueueInfoNCELoss(nn.Module):
    """Query i's positive is key i; the negatives are the queue's keys.

    Args:
        temperature: softmax temperature (MoCo v2: 0.2).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    @in_float32
    def forward(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """``query``, ``key``: (N, D); ``queue``: (K, D) of already normalized keys."""
        if query.shape != key.shape or queue.shape[1] != query.shape[1]:
            raise ValueError(
                f"shapes do not fit: query {query.shape}, key {key.shape}, queue {queue.shape}"
            )
        q = F.normalize(query, dim=1)
        k = F.normalize(key.detach(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        negative = q @ queue.detach().T  # (N, K)
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)
