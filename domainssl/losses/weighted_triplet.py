"""The weighted regularized triplet loss (WRT) of AGW (Ye et al. 2021, "Deep Learning for
Person Re-identification: A Survey and Outlook", Eq. 6), as in its released code
(mangye16/Cross-Modal-Re-ID-baseline, ``loss.py`` ``TripletLoss_WRT``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainssl.losses.precision import in_float32


def softmax_weights(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax of ``values`` over the entries where ``mask`` is 1 (0 elsewhere)."""
    largest = (values * mask).max(dim=1, keepdim=True).values
    exp = torch.exp(values - largest) * mask
    return exp / (exp.sum(dim=1, keepdim=True) + 1e-6)


class WeightedRegularizedTriplet(nn.Module):
    """For each anchor, a softmax-weighted mean of its positive distances (farther ones
    weigh more) and of its negative distances (closer ones weigh more); the loss is the
    soft margin ``log(1 + exp(positive - negative))`` averaged over anchors. No margin to
    tune. As in the released code, the anchor counts among its own positives (distance 0)
    and distances are Euclidean on the features as given (not normalized)."""

    @in_float32
    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of features (N, D) with identity labels (N,)."""
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise ValueError(f"expected (N, D) features and (N,) labels, got "
                             f"{tuple(features.shape)}, {tuple(labels.shape)}")  # fmt: skip
        squared = features.pow(2).sum(1)
        distance = squared[:, None] + squared[None, :] - 2 * features @ features.T
        distance = distance.clamp(min=1e-12).sqrt()  # (N, N); finite gradients at 0
        positive = (labels[:, None] == labels[None, :]).float()
        negative = 1.0 - positive
        far_positive = (distance * positive * softmax_weights(distance * positive, positive)).sum(1)
        near_negative = (distance * negative * softmax_weights(-distance * negative, negative)).sum(
            1
        )
        return F.soft_margin_loss(near_negative - far_positive, torch.ones_like(far_positive))
