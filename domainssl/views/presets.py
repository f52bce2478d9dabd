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
from domainssl.views.modality import (
    grayscale,
    horizontal_flip,
    random_channel,
    random_erasing,
    to_three_channels,
)
from domainssl.views.object_crops import object_crop_pair
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

    def forward(self, images: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """One random view of raw (B, C, H, W) pixels: standardized (B, C, crop, crop).

        ``theta`` (B, 2, 3), when given, is the crop to use instead of a random one.
        """
        cfg = self.config
        views = crop_flip_rotate(self.standardize(images), cfg, theta)
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

    def forward(self, images: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        views = crop_flip_rotate(images / 255.0, cfg, theta).clamp(0, 1)
        views = hed_jitter(views, cfg.hed_sigma, cfg.hed_bias)
        views = random_blur(views, cfg.blur_p, cfg.blur_sigma)
        return self.standardize(views * 255.0)


class ReidViews(nn.Module):
    """RGB-infrared person views at the loader's person shape: RGB views become one random
    channel or gray at times (bridging to infrared), then flips and random erasing."""

    def __init__(self, config: ViewsConfig, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.config = config
        self.standardize = Standardize(mean, std)

    def forward(self, images: torch.Tensor, infrared: bool = False) -> torch.Tensor:
        """One view of raw (B, 1 or 3, H, W) pixels: standardized (B, 3, H, W)."""
        cfg = self.config
        views = to_three_channels(images.float())
        if not infrared:
            views = grayscale(random_channel(views, cfg.channel_p), cfg.gray_p)
        views = horizontal_flip(self.standardize(views), cfg.flip_p)
        return random_erasing(views, cfg.erase_p)


def crop_flip_rotate(
    images: torch.Tensor, config: ViewsConfig, theta: torch.Tensor | None = None
) -> torch.Tensor:
    """Random resized crop, flip and 90-degree rotation (or the crop ``theta``) in one
    resampling."""
    if theta is not None:
        return resample(images, theta, config.crop_size)
    theta = random_crop_affine(
        images.shape[0],
        config.crop_scale,
        config.crop_ratio,
        config.flip_p,
        config.rot90,
        images.device,
    )
    return resample(images, theta, config.crop_size)


def view_pair(
    views: nn.Module, images: torch.Tensor, boxes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of raw (B, C, H, W) images: independent random crops, or, with
    ``views.crops`` object_aware / scene_object, crops around the (B, 4) proposal ``boxes``."""
    config: ViewsConfig = views.config  # type: ignore[assignment]
    if boxes is None or config.crops == "random":
        return views(images), views(images)
    first, second = object_crop_pair(boxes.to(images.device), config)
    return views(images, first), views(images, second)


def build_views(config: ViewsConfig, mean: list[float], std: list[float]) -> nn.Module:
    """The view pipeline named by ``views.preset``."""
    presets: dict[str, type[nn.Module]] = {
        "eo": EOViews,
        "pathology": PathologyViews,
        "reid": ReidViews,
    }
    return presets[config.preset](config, mean, std)
