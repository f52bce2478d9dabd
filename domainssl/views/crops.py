"""Random resized crop, flips and 90-degree rotations as one batched affine resampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_crop_affine(
    batch: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_p: float,
    rot90: bool,
    device: torch.device,
) -> torch.Tensor:
    """Per-sample affine matrices (B, 2, 3) mapping output to input grid coordinates.

    Crop area fraction ~ U(scale), log aspect ratio ~ U(log ratio) as in torchvision's
    RandomResizedCrop; then a horizontal flip with ``flip_p`` and a rotation by k*90 degrees.
    """
    area = torch.empty(batch, device=device).uniform_(*scale)
    log_ratio = torch.empty(batch, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_ratio.exp()
    half_w = (area * aspect).sqrt().clamp(max=1.0)  # half-width in [-1, 1] grid units
    half_h = (area / aspect).sqrt().clamp(max=1.0)
    center_x = (torch.rand(batch, device=device) * 2 - 1) * (1 - half_w)
    center_y = (torch.rand(batch, device=device) * 2 - 1) * (1 - half_h)
    flip = torch.where(torch.rand(batch, device=device) < flip_p, -1.0, 1.0)
    turns = torch.randint(0, 4 if rot90 else 1, (batch,), device=device)
    angle = turns.float() * (math.pi / 2)
    cos, sin = angle.cos().round(), angle.sin().round()
    theta = torch.zeros(batch, 2, 3, device=device)
    # linear part: diag(half_w, half_h) @ rotation @ diag(flip, 1)
    theta[:, 0, 0] = half_w * cos * flip
    theta[:, 0, 1] = -half_w * sin
    theta[:, 1, 0] = half_h * sin * flip
    theta[:, 1, 1] = half_h * cos
    theta[:, 0, 2] = center_x
    theta[:, 1, 2] = center_y
    return theta


def resample(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Apply affine matrices to a (B, C, H, W) batch, giving (B, C, size, size)."""
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
