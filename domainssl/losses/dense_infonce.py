"""Dense InfoNCE with correspondence by backbone-feature similarity (DenseCL, Wang et al.
2021, "Dense Contrastive Learning for Self-Supervised Visual Pre-Training", eq. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainssl.losses.gather import gather_no_grad
from domainssl.losses.precision import in_float32


@torch.no_grad()
def match_locations(query_features: torch.Tensor, key_features: torch.Tensor) -> torch.Tensor:
    """For each query location, the key location of the same image whose feature has the
    highest cosine similarity: (B, C, Sq) and (B, C, Sk) -> indices (B, Sq) into Sk."""
    q = F.normalize(query_features, dim=1)
    k = F.normalize(key_features, dim=1)
    similarity = q.transpose(1, 2) @ k  # (B, Sq, Sk)
    return similarity.argmax(dim=2)


@torch.no_grad()
def push_keys(queue: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``queue`` (K, D) with the keys (B, D) of every process at its front, newest first,
    and the oldest dropped: the same queue on all ranks."""
    everyone = gather_no_grad(keys.to(queue.dtype))  # (world * B, D)
    return torch.cat([everyone, queue])[: len(queue)]


class DenseInfoNCELoss(nn.Module):
    """Each query location's positive is the key location its backbone feature matches
    best (:func:`match_locations`); the negatives are a queue of keys of other images.

    The loss is the cross-entropy over ``[positive, queue]`` logits / temperature, averaged
    over all B x S query locations. Keys, backbone features and the queue get no gradient.

    Args:
        temperature: softmax temperature (DenseCL: 0.2).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    @in_float32
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        query_features: torch.Tensor,
        key_features: torch.Tensor,
        queue: torch.Tensor,
    ) -> torch.Tensor:
        """``query`` (B, D, h, w) and ``key`` (B, D, h', w'): dense projections of the two
        views; ``query_features`` (B, C, h, w) and ``key_features`` (B, C, h', w'): the
        backbone maps they were projected from; ``queue`` (K, D) of normalized keys."""
        b, d = query.shape[:2]
        if query.dim() != 4 or key.dim() != 4 or key.shape[:2] != (b, d):
            raise ValueError(
                f"query and key must be (B, D, h, w) maps of one B and D: {query.shape}, "
                f"{key.shape}"
            )
        if (
            query_features.shape[:1] + query_features.shape[2:] != (b, *query.shape[2:])
            or key_features.shape[:1] + key_features.shape[2:] != (b, *key.shape[2:])
            or query_features.shape[1] != key_features.shape[1]
        ):
            raise ValueError(
                f"backbone maps {query_features.shape}, {key_features.shape} must have one "
                f"channel count and the batch and grid of query {query.shape} and key {key.shape}"
            )
        if queue.dim() != 2 or queue.shape[1] != d:
            raise ValueError(f"queue {queue.shape} must be (K, {d})")
        q = F.normalize(query.flatten(2), dim=1)  # (B, D, S)
        k = F.normalize(key.detach().flatten(2), dim=1)  # (B, D, S')
        match = match_locations(query_features.flatten(2), key_features.flatten(2))  # (B, S)
        matched = k.gather(2, match.unsqueeze(1).expand(-1, d, -1))  # (B, D, S)
        positive = (q * matched).sum(dim=1).reshape(-1, 1)  # (B * S, 1)
        negative = q.transpose(1, 2).reshape(-1, d) @ queue.detach().T  # (B * S, K)
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, labels)
