"""Render a grid of original samples and their augmented views for a person to look at."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from domainssl.io import atomic_write

DISPLAY_SIZE = 128


def display_bands(band_names: list[str]) -> list[int]:
    """Indices of red, green, blue when the bands are named so, else the first three."""
    lower = [name.lower() for name in band_names]
    if all(c in lower for c in ("red", "green", "blue")):
        return [lower.index(c) for c in ("red", "green", "blue")]
    return [min(i, len(band_names) - 1) for i in range(3)]


def to_display(images: torch.Tensor, bands: list[int]) -> torch.Tensor:
    """Normalized (B, C, H, W) -> (B, 3, H, W) in [0, 1], 2-98% stretch per band."""
    rgb = images[:, bands].float()
    flat = rgb.transpose(0, 1).reshape(3, -1)
    low = flat.quantile(0.02, dim=1).view(1, 3, 1, 1)
    high = flat.quantile(0.98, dim=1).view(1, 3, 1, 1)
    return ((rgb - low) / (high - low).clamp(min=1e-6)).clamp(0, 1)


def save_view_grid(
    originals: torch.Tensor, views: list[torch.Tensor], band_names: list[str], out: Path
) -> None:
    """One row per sample: the original, then each view (shown at least 128 px wide)."""
    size = max(views[0].shape[-1], DISPLAY_SIZE)
    resized = [
        torch.nn.functional.interpolate(images, size=(size, size), mode="nearest")
        for images in (originals, *views)
    ]
    columns = torch.stack(resized, dim=1)  # (B, 1 + V, C, S, S)
    tiles = to_display(columns.flatten(0, 1), display_bands(band_names))
    grid = make_grid(tiles, nrow=columns.shape[1], padding=2, pad_value=1.0)
    atomic_write(out, lambda tmp: save_image(grid, tmp, format=out.suffix.lstrip(".") or "png"))
