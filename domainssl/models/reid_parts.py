"""The parts AGW (Ye et al. 2021) adds to a ResNet for person re-identification: generalized-
mean pooling, the BNNeck, non-local blocks and a last stage without downsampling. Settings
follow the released code (mangye16/Cross-Modal-Re-ID-baseline, ``model.py``)."""

from __future__ import annotations

import torch
from torch import nn


class GeneralizedMeanPooling(nn.Module):
    """``(mean(x ** p)) ** (1 / p)`` over the spatial positions (B, C, H, W) -> (B, C);
    p = 1 is average pooling, p -> inf max pooling. AGW fixes p = 3 (Radenović et al. 2019
    learn it). Inputs are non-negative (after a ReLU)."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        pooled = maps.float().clamp(min=0).pow(self.p).flatten(2).mean(dim=2)  # (B, C)
        return (pooled + 1e-12).pow(1.0 / self.p).to(maps.dtype)


class BNNeck(nn.BatchNorm1d):
    """Batch normalization between the pooled feature (for the triplet loss) and the
    identity classifier (Luo et al. 2019, "Bag of Tricks"); its shift is frozen at 0."""

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.bias.requires_grad_(False)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)


class NonLocalBlock(nn.Module):
    """Non-local block (Wang et al. 2018), dot-product form as in AGW: every position gets
    a sum of all positions' embeddings weighted by similarity / N, added back through a
    zero-initialized projection (so an inserted block starts as the identity)."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        norm = nn.BatchNorm2d(channels)
        nn.init.zeros_(norm.weight)
        nn.init.zeros_(norm.bias)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, 1), norm)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = maps.shape
        values = self.g(maps).flatten(2).transpose(1, 2)  # (B, N, C')
        queries = self.theta(maps).flatten(2).transpose(1, 2)  # (B, N, C')
        keys = self.phi(maps).flatten(2)  # (B, C', N)
        affinity = queries @ keys / keys.shape[-1]  # (B, N, N)
        mixed = (affinity @ values).transpose(1, 2).reshape(batch, -1, height, width)
        return maps + self.out(mixed)


def with_non_local(stage: nn.Sequential, blocks: int, channels: int) -> nn.Sequential:
    """``stage`` with a non-local block after each of its last ``blocks`` residual blocks
    (AGW: 2 in stage 3, 3 in stage 4 of ResNet-50, i.e. layer2 and layer3)."""
    layers: list[nn.Module] = []
    first = len(stage) - blocks
    for index, block in enumerate(stage):
        layers.append(block)
        if index >= first:
            layers.append(NonLocalBlock(channels))
    return nn.Sequential(*layers)


def stage_channels(stage: nn.Sequential) -> int:
    """Channels a ResNet stage outputs: those of its last block's last BatchNorm."""
    norms = [m for m in stage[-1].modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


def remove_last_downsampling(stage: nn.Sequential) -> None:
    """Stride 1 in the first block of ``stage`` (AGW's ``last_conv_stride=1``): the last
    feature maps keep twice the resolution, which re-ID benefits from. Handles both the
    strided-convolution and the average-pool shortcut (``avg_down``) ResNet variants."""
    for name, module in list(stage[0].named_modules()):
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
        elif isinstance(module, nn.AvgPool2d) and module.stride in (2, (2, 2)):
            parent_name, _, child = name.rpartition(".")
            parent = stage[0].get_submodule(parent_name) if parent_name else stage[0]
            setattr(parent, child, nn.Identity())
