"""View presets: per domain, what a model trained on that domain should ignore.

A preset is a pipeline that takes raw pixel values (B, C, H, W) as float and returns one
random view, standardized with the per-band mean/std of the data, registered with its
``views`` section model (:mod:`domainssl.views.settings`) under ``views.preset``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from domainssl.config import VIEW_CONFIGS, ViewsConfig
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
from domainssl.views.settings import (
    CropViewsConfig,
    EOViewsConfig,
    PathologyViewsConfig,
    ReidViewsConfig,
)
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


class ViewPipeline(nn.Module):
    """Raw pixels to one random standardized view; a preset's pipeline subclasses it."""

    config: ViewsConfig

    def __init__(self, config: ViewsConfig, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.config = config
        self.standardize = Standardize(mean, std)


PRESETS: dict[str, type[ViewPipeline]] = {}
"""The view pipelines by ``views.preset``."""
PipelineT = TypeVar("PipelineT", bound=ViewPipeline)


def register_preset(config: type[ViewsConfig]) -> Callable[[type[PipelineT]], type[PipelineT]]:
    """Class decorator: register a pipeline and its ``views`` section model."""

    def register(pipeline: type[PipelineT]) -> type[PipelineT]:
        VIEW_CONFIGS.register(config)
        PRESETS[config.model_fields["preset"].default] = pipeline
        return pipeline

    return register


@register_preset(EOViewsConfig)
class EOViews(ViewPipeline):
    """Earth observation views for N bands.

    Random resized crop, flips and 90-degree rotations (overhead imagery has no up),
    per-band brightness/contrast jitter, band dropout, blur and sensor-like noise.
    """

    config: EOViewsConfig

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


@register_preset(PathologyViewsConfig)
class PathologyViews(ViewPipeline):
    """H&E views on 8-bit RGB: crop, flips and 90-degree rotations (tissue has no
    canonical orientation), HED stain jitter (Tellez et al. 2018) and mild blur."""

    config: PathologyViewsConfig

    def __init__(self, config: ViewsConfig, mean: list[float], std: list[float]) -> None:
        if len(mean) != 3:
            raise DomainSSLError(
                f"The pathology views need RGB images (3 bands), the data has {len(mean)}."
            )
        super().__init__(config, mean, std)

    def forward(self, images: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        views = crop_flip_rotate(images / 255.0, cfg, theta).clamp(0, 1)
        views = hed_jitter(views, cfg.hed_sigma, cfg.hed_bias)
        views = random_blur(views, cfg.blur_p, cfg.blur_sigma)
        return self.standardize(views * 255.0)


@register_preset(ReidViewsConfig)
class ReidViews(ViewPipeline):
    """RGB-infrared person views at the loader's person shape: RGB views become one random
    channel or gray at times (bridging to infrared), then flips and random erasing."""

    config: ReidViewsConfig

    def forward(self, images: torch.Tensor, infrared: bool = False) -> torch.Tensor:
        """One view of raw (B, 1 or 3, H, W) pixels: standardized (B, 3, H, W)."""
        cfg = self.config
        views = to_three_channels(images.float())
        if not infrared:
            views = grayscale(random_channel(views, cfg.channel_p), cfg.gray_p)
        views = horizontal_flip(self.standardize(views), cfg.flip_p)
        return random_erasing(views, cfg.erase_p)


def crop_flip_rotate(
    images: torch.Tensor, config: CropViewsConfig, theta: torch.Tensor | None = None
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
    views: ViewPipeline, images: torch.Tensor, boxes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of raw (B, C, H, W) images: independent random crops, or, with
    ``views.crops`` object_aware / scene_object, crops around the (B, 4) proposal ``boxes``."""
    config = views.config
    if boxes is None or not isinstance(config, CropViewsConfig) or config.crops == "random":
        return views(images), views(images)
    first, second = object_crop_pair(boxes.to(images.device), config)
    return views(images, first), views(images, second)


def build_views(config: ViewsConfig, mean: list[float], std: list[float]) -> ViewPipeline:
    """The view pipeline of ``views.preset``."""
    return PRESETS[config.preset](config, mean, std)
