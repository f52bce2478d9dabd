"""Projection and prediction MLPs (SimCLR / MoCo v2 / BYOL / SimSiam)."""

from __future__ import annotations

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
