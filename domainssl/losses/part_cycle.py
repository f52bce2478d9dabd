"""Part-aware cycle-contrastive loss of MMGL (Wan et al. 2021): cross-modality part pairs.

For an RGB part, its nearest infrared part in the batch is found, and from that one the
nearest RGB part back; when the cycle returns to the start (mutual nearest neighbours) the
pair is a positive of an InfoNCE loss, with every other part of the other modality a
negative. Both directions are anchors (RGB -> IR and IR -> RGB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainssl.losses.gather import gather_with_grad, world
from domainssl.losses.precision import in_float32


@torch.no_grad()
def cycle_consistent_pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (i, j) with b_j the nearest of a_i and a_i the nearest of b_j (cosine).

    Args:
        a: (N, D) features of one modality.
        b: (M, D) features of the other.

    Returns:
        Indices into ``a`` (K,) and into ``b`` (K,) of the K cycle-consistent pairs.
    """
    similarity = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T  # (N, M)
    forward = similarity.argmax(dim=1)  # (N,) nearest b of each a
    backward = similarity.argmax(dim=0)  # (M,) nearest a of each b
    keep = backward[forward] == torch.arange(len(a), device=a.device)
    return keep.nonzero().flatten(), forward[keep]


class PartCycleContrastiveLoss(nn.Module):
    """InfoNCE over cycle-consistent RGB-IR part pairs (mean over the 2K anchors).

    In distributed runs pairs and negatives come from the parts of all processes (gathered
    with gradients); each process scores the anchors it holds, scaled so that the mean over
    processes is the loss of the global batch. :attr:`pairs` holds the last global K.

    Args:
        temperature: softmax temperature.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.pairs = 0

    @in_float32
    def forward(self, rgb: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Loss of RGB parts (N, D) and infrared parts (M, D) of the local batch."""
        if rgb.ndim != 2 or ir.ndim != 2 or rgb.shape[1] != ir.shape[1]:
            raise ValueError(f"expected (N, D) and (M, D) parts, got {rgb.shape}, {ir.shape}")
        rank, size = world()
        every_rgb = F.normalize(gather_with_grad(rgb), dim=1)  # (W*N, D)
        every_ir = F.normalize(gather_with_grad(ir), dim=1)  # (W*M, D)
        rgb_index, ir_index = cycle_consistent_pairs(every_rgb, every_ir)  # (K,), (K,)
        self.pairs = len(rgb_index)  # >= 1: the most similar pair of all is always mutual
        total = self._anchored(rgb, every_ir, rgb_index, ir_index, rank)
        total = total + self._anchored(ir, every_rgb, ir_index, rgb_index, rank)
        return total * size / (2 * self.pairs)

    def _anchored(
        self,
        local: torch.Tensor,
        others: torch.Tensor,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        rank: int,
    ) -> torch.Tensor:
        """Summed cross-entropy of the pairs whose anchor row lives on this process."""
        start = rank * len(local)
        mine = (anchors >= start) & (anchors < start + len(local))
        queries = F.normalize(local[anchors[mine] - start], dim=1)  # (k, D)
        logits = queries @ others.T / self.temperature  # (k, W*M)
        return F.cross_entropy(logits, positives[mine], reduction="sum")
