"""View pipelines per domain: what a model trained on that domain should ignore."""

from __future__ import annotations

import torch
from torch import nn

from domainssl.config import ViewsConfig
from domainssl.views.crops import random_crop_affine, resample
from domainssl.views.spectral import band_dropout, band_jitter, gaussian_noise, random_blur


class EOViews(nn.Module):
    """Earth observation views for N bands.

    Random resized crop, flips and 90-degree rotations (overhead imagery has no up),
    per-band brightness/contrast jitter, band dropout, blur and sensor-like noise.
    """

    def __init__(self, config: ViewsConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """One random view of a normalized (B, C, H, W) batch: (B, C, crop, crop)."""
        cfg = self.config
        theta = random_crop_affine(
            images.shape[0], cfg.crop_scale, cfg.crop_ratio, cfg.flip_p, cfg.rot90, images.device
        )
        views = resample(images, theta, cfg.crop_size)
        views = band_jitter(views, cfg.jitter_p, cfg.brightness, cfg.contrast)
        views = band_dropout(views, cfg.band_dropout_p)
        views = random_blur(views, cfg.blur_p, cfg.blur_sigma)
        return gaussian_noise(views, cfg.noise_std)


def build_views(config: ViewsConfig) -> nn.Module:
    """The view pipeline named by ``views.preset``."""
    presets: dict[str, type[nn.Module]] = {"eo": EOViews}
    return presets[config.preset](config)
