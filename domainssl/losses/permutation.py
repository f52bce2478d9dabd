"""Stripe-permutation recovery (MMGL, Wan et al. 2021): shuffle stripes, predict the order.

Each image is cut into horizontal stripes and reordered by a permutation drawn from a fixed
set; a classifier predicts which one. An unpaired RGB and infrared image share the drawn
permutation, so one shared classifier learns a permutation-aware space for both modalities.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.losses.precision import in_float32

MAX_STRIPES = 8
"""8! = 40,320 candidate permutations; more would not fit the greedy selection."""


def permutation_set(stripes: int, size: int, seed: int = 0) -> torch.Tensor:
    """A fixed set (size, stripes) of permutations of ``range(stripes)``.

    All of them when ``size == stripes!``; otherwise chosen greedily to maximize the
    minimum Hamming distance to those already chosen, from a seeded first one (the jigsaw
    set of Noroozi & Favaro 2016), so that the classes are far apart.
    """
    if not 2 <= stripes <= MAX_STRIPES:
        raise DomainSSLError(f"method.stripes must be in 2..{MAX_STRIPES}, got {stripes}.")
    total = math.factorial(stripes)
    if not 2 <= size <= total:
        raise DomainSSLError(
            f"method.permutations must be in 2..{total} (= {stripes}!) for {stripes} stripes, "
            f"got {size}."
        )
    candidates = torch.tensor(list(itertools.permutations(range(stripes))))  # (total, S)
    if size == total:
        return candidates
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(total, (1,), generator=generator))]
    nearest = (candidates != candidates[chosen[0]]).sum(1)  # (total,) Hamming distance
    while len(chosen) < size:
        chosen.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, (candidates != candidates[chosen[-1]]).sum(1))
    return candidates[chosen]


def shuffle_stripes(
    images: torch.Tensor, permutations: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Reorder the stripes of (B, C, H, W): output stripe s is input stripe
    ``permutations[labels[b], s]``. Rows beyond a multiple of the stripe count are cut."""
    batch, channels, height, width = images.shape
    stripes = permutations.shape[1]
    rows = height // stripes
    if rows == 0:
        raise ValueError(f"images of height {height} cannot be cut into {stripes} stripes")
    parts = images[:, :, : rows * stripes].reshape(batch, channels, stripes, rows, width)
    order = permutations[labels].view(batch, 1, stripes, 1, 1)
    order = order.expand(batch, channels, stripes, rows, width)
    return parts.gather(2, order).reshape(batch, channels, stripes * rows, width)


class PermutationRecoveryLoss(nn.Module):
    """Cross-entropy of permutation logits (N, P) against the drawn permutation indices.

    Args:
        stripes: horizontal stripes per image.
        size: permutations in the fixed set.
        seed: seed of the set's selection (the set is part of the model's state).
    """

    permutations: torch.Tensor

    def __init__(self, stripes: int, size: int, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("permutations", permutation_set(stripes, size, seed))

    def draw(self, batch: int) -> torch.Tensor:
        """Random permutation indices (B,) on the set's device."""
        return torch.randint(len(self.permutations), (batch,), device=self.permutations.device)

    def shuffle(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) with their stripes reordered by permutations ``labels``."""
        return shuffle_stripes(images, self.permutations, labels)

    @in_float32
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape != (len(labels), len(self.permutations)):
            raise ValueError(
                f"expected logits (N, {len(self.permutations)}) for N labels, got "
                f"{tuple(logits.shape)} for {len(labels)}"
            )
        return F.cross_entropy(logits, labels)
