"""View pipelines per domain: what a model trained on that domain should ignore.

A pipeline takes raw pixel values (B, C, H, W) as float and returns one random view,
standardized with the per-band mean/std of the data.
"""

from __future__ import annotations

import torch
from torch import nn

from domainssl.config import ViewsConfig
from domainssl.errors import DomainSSLError
from domainssl.views.crops import random_crop_affine, resample
from domainssl.views.spectral import band_dropout, band_jitter, gaussian_noise, random_blur
from domainssl.views.stain import hed_jitter


class Standardize(nn.Module):
    """(x - mean) / std per band; NaN/inf (nodata) become 0, the band mean."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num((images - self.mean) / self.std, 0.0, 0.0, 0.0)


class EOViews(nn.Module):
    """Earth observation views for N bands.

    Random resized crop, flips and 90-degree rotations (overhead imagery has no up),
    per-band brightness/contrast jitter, band dropout, blur and sensor-like noise.
    """

    def __init__(self, config: ViewsConfig, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.config = config
        self.standardize = Standardize(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """One random view of raw (B, C, H, W) pixels: standardized (B, C, crop, crop)."""
        cfg = self.config
        views = crop_flip_rotate(self.standardize(images), cfg)
        views = band_jitter(views, cfg.jitter_p, cfg.brightness, cfg.contrast)
        views = band_dropout(views, cfg.band_dropout_p)
        views = random_blur(views, cfg.blur_p, cfg.blur_sigma)
        return gaussian_noise(views, cfg.noise_std)


class PathologyViews(nn.Module):
    """H&E views on 8-bit RGB: crop, flips and 90-degree rotations (tissue has no
    canonical orientation), HED stain jitter (Tellez et al. 2018) and mild blur."""

    def __init__(self, config: ViewsConfig, mean: list[float], std: list[float]) -> None:
        super().__init__()
        if len(mean) != 3:
            raise DomainSSLError(
                f"The pathology views need RGB images (3 bands), the data has {len(mean)}."
            )
        self.config = config
        self.standardize = Standardize(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        views = crop_flip_rotate(images / 255.0, cfg).clamp(0, 1)
        views = hed_jitter(views, cfg.hed_sigma, cfg.hed_bias)
        views = random_blur(views, cfg.blur_p, cfg.blur_sigma)
        return self.standardize(views * 255.0)


def crop_flip_rotate(images: torch.Tensor, config: ViewsConfig) -> torch.Tensor:
    """Random resized crop, flip and 90-degree rotation in one resampling."""
    theta = random_crop_affine(
        images.shape[0],
        config.crop_scale,
        config.crop_ratio,
        config.flip_p,
        config.rot90,
        images.device,
    )
    return resample(images, theta, config.crop_size)


def build_views(config: ViewsConfig, mean: list[float], std: list[float]) -> nn.Module:
    """The view pipeline named by ``views.preset``."""
    presets: dict[str, type[nn.Module]] = {"eo": EOViews, "pathology": PathologyViews}
    return presets[config.preset](config, mean, std)
