"""RGB-infrared view operations on batches (B, C, H, W): bridging the modality gap.

Infrared images have one channel of thermal intensity; RGB views are pushed towards them by
replacing the colours with one random channel or with luminance (Ye et al. 2021, "Channel
Augmented Joint Learning for Visible-Infrared Recognition"). Random erasing (Zhong et al.
2020) and horizontal flips are the usual person re-identification views; persons have an up,
so there are no vertical flips or rotations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luminance weights of R, G, B."""


def to_three_channels(images: torch.Tensor) -> torch.Tensor:
    """Infrared stored with one channel (B, 1, H, W) repeated to (B, 3, H, W); 3 stays."""
    if images.shape[1] == 1:
        return images.repeat(1, 3, 1, 1)
    if images.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {images.shape[1]}")
    return images


def person_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (B, C, H, W) to the person shape ``size`` = (height, width), antialiased.

    uint8 input stays uint8.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
    if images.dtype == torch.uint8:
        return resized.round().clamp(0, 255).to(torch.uint8)
    return resized


def _chosen(images: torch.Tensor, p: float) -> torch.Tensor:
    """A (B, 1, 1, 1) boolean mask: which samples an operation of probability ``p`` hits."""
    return (torch.rand(images.shape[0], 1, 1, 1, device=images.device) < p).expand_as(images)


def random_channel(images: torch.Tensor, p: float) -> torch.Tensor:
    """With probability ``p`` per sample, one random channel repeated to all 3 (B, 3, H, W)."""
    batch = images.shape[0]
    pick = torch.randint(0, 3, (batch,), device=images.device)
    single = images[torch.arange(batch, device=images.device), pick]  # (B, H, W)
    return torch.where(_chosen(images, p), single[:, None].expand_as(images), images)


def grayscale(images: torch.Tensor, p: float) -> torch.Tensor:
    """With probability ``p`` per sample, luminance repeated to 3 channels (B, 3, H, W)."""
    weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    gray = (images * weights).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    return torch.where(_chosen(images, p), gray.expand_as(images), images)


def horizontal_flip(images: torch.Tensor, p: float) -> torch.Tensor:
    """Mirror left-right with probability ``p`` per sample."""
    return torch.where(_chosen(images, p), images.flip(-1), images)


def random_erasing(
    images: torch.Tensor,
    p: float,
    scale: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
) -> torch.Tensor:
    """With probability ``p`` per sample, set one random rectangle to ``value``.

    Area share ~ U(scale), log aspect ~ U(log ratio), as in Zhong et al. 2020 (their
    re-ID defaults); on standardized views ``value`` 0 is the data mean.
    """
    batch, _, height, width = images.shape
    device = images.device
    area = torch.empty(batch, device=device).uniform_(*scale) * height * width
    aspect = torch.empty(batch, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    box_h = (area * aspect.exp()).sqrt().clamp(1, height).floor()
    box_w = (area / aspect.exp()).sqrt().clamp(1, width).floor()
    top = (torch.rand(batch, device=device) * (height - box_h + 1)).floor()
    left = (torch.rand(batch, device=device) * (width - box_w + 1)).floor()
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + box_h).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + box_w).view(-1, 1, 1))
    )  # (B, H, W)
    hit = torch.rand(batch, device=device) < p
    mask = (inside & hit.view(-1, 1, 1))[:, None].expand_as(images)  # (B, C, H, W)
    return images.masked_fill(mask, value)
