"""Band-wise photometric views for any band count (no RGB-only colour operations).

All functions take a normalized (B, C, H, W) float batch, so strengths are in units of
each band's standard deviation.
"""

from __future__ import annotations

import math

import torch
from kornia.filters import gaussian_blur2d


def band_jitter(images: torch.Tensor, p: float, brightness: float, contrast: float) -> torch.Tensor:
    """Per-sample, per-band contrast (around the band mean) and brightness shift, prob. ``p``."""
    b, c = images.shape[:2]
    apply = (torch.rand(b, 1, 1, 1, device=images.device) < p).float()
    gain = 1 + (torch.rand(b, c, 1, 1, device=images.device) * 2 - 1) * contrast * apply
    shift = (torch.rand(b, c, 1, 1, device=images.device) * 2 - 1) * brightness * apply
    mean = images.mean(dim=(2, 3), keepdim=True)
    return (images - mean) * gain + mean + shift


def band_dropout(images: torch.Tensor, p: float) -> torch.Tensor:
    """Zero (the band mean) each band with probability ``p``; one band always survives."""
    if p <= 0:
        return images
    b, c = images.shape[:2]
    keep = torch.rand(b, c, device=images.device) >= p
    rescue = torch.randint(0, c, (b,), device=images.device)
    keep[torch.arange(b, device=images.device), rescue] |= ~keep.any(dim=1)
    return images * keep[:, :, None, None].to(images.dtype)


def random_blur(images: torch.Tensor, p: float, sigma: tuple[float, float]) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma ~ U(sigma) on a random share ``p`` of samples."""
    chosen = (torch.rand(images.shape[0], device=images.device) < p).nonzero().flatten()
    if p <= 0 or len(chosen) == 0:
        return images
    sigmas = torch.empty(len(chosen), device=images.device).uniform_(*sigma)
    kernel = 2 * math.ceil(3 * sigma[1]) + 1
    blurred = gaussian_blur2d(
        images[chosen],
        (kernel, kernel),
        torch.stack([sigmas, sigmas], dim=1),
        border_type="reflect",
    )
    out = images.clone()
    out[chosen] = blurred
    return out


def gaussian_noise(images: torch.Tensor, max_std: float) -> torch.Tensor:
    """Additive noise with a per-sample std ~ U(0, ``max_std``)."""
    if max_std <= 0:
        return images
    std = torch.rand(images.shape[0], 1, 1, 1, device=images.device) * max_std
    return images + torch.randn_like(images) * std
