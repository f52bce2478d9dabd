"""Projection and prediction MLPs (SimCLR / MoCo v2 / BYOL / SimSiam)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    layers: int = 2,
    last_bn: bool = False,
    hidden_bn: bool = True,
) -> nn.Sequential:
    """Linear-BN-ReLU blocks (Linear-ReLU without ``hidden_bn``, as MoCo v2's head) then a
    linear output (optionally batch-normalized)."""
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks.append(nn.Linear(dim, hidden_dim, bias=not hidden_bn))
        if hidden_bn:
            blocks.append(nn.BatchNorm1d(hidden_dim))
        blocks.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        blocks.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*blocks)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021): a 3-layer MLP (GELU) to a bottleneck,
    L2 normalization, then a weight-normalized linear layer to ``out_dim`` prototypes whose
    norm is frozen at 1 (``norm_last_layer``), as in the released code."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Prototype scores (..., out_dim) of features (..., in_dim)."""
        return self.last_layer(nn.functional.normalize(self.mlp(features), dim=-1))
