"""Multi-crop (Caron et al. 2020/2021) from a domain's view preset: a few global crops and
several smaller local crops, each through the preset's own operations (spectral, stain or
geometric), never RGB colour jitter on N bands."""

from __future__ import annotations

import torch
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.views.presets import build_views
from domainssl.views.settings import CropViewsConfig


class MultiCropViews(nn.Module):
    """``global_crops`` views at ``views.crop_size`` and ``local_crops`` at ``local_size``.

    Args:
        config: the run's views (a cropping preset: eo or pathology).
        mean: per-band mean of the raw pixels; std likewise.
        global_scale: area range of the global crops (DINO: 0.4-1).
        local_size: side (px) of the local crops (DINO: 96 at 224, so about 0.43x).
        local_scale: area range of the local crops (DINO: 0.05-0.4).
        local_crops: how many local crops per image.
        global_crops: how many global crops per image (DINO: 2).
    """

    def __init__(
        self,
        config: CropViewsConfig,
        mean: list[float],
        std: list[float],
        global_scale: tuple[float, float],
        local_size: int,
        local_scale: tuple[float, float],
        local_crops: int,
        global_crops: int = 2,
    ) -> None:
        super().__init__()
        if not isinstance(config, CropViewsConfig):
            raise DomainSSLError(
                f"Multi-crop needs a cropping view preset (eo, pathology), not {config.preset}."
            )
        global_config = config.model_copy(update={"crop_scale": global_scale})
        local_config = config.model_copy(
            update={"crop_size": local_size, "crop_scale": local_scale}
        )
        self.global_views = build_views(global_config, mean, std)
        self.local_views = build_views(local_config, mean, std)
        self.global_crops, self.local_crops = global_crops, local_crops

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw (B, C, H, W) images to global crops (G, B, C, S, S) and local crops
        (L, B, C, s, s), or None without local crops."""
        globals_ = torch.stack([self.global_views(images) for _ in range(self.global_crops)])
        if not self.local_crops:
            return globals_, None
        return globals_, torch.stack([self.local_views(images) for _ in range(self.local_crops)])
