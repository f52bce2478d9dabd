"""BYOL (Grill et al. 2020): predict an EMA target's projection of the other view."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from domainssl.losses import NegativeCosineLoss
from domainssl.methods.base import SSLMethod, ema_update
from domainssl.models.heads import mlp


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: ``1 - (1 - base) * (cos(pi * progress) + 1) / 2``, from base to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


class BYOL(SSLMethod):
    """Online backbone + projector + predictor; target = EMA of backbone + projector."""

    def __init__(
        self, config: dict[str, Any], band_names: list[str], mean: list[float], std: list[float]
    ) -> None:
        super().__init__(config, band_names, mean, std)
        cfg = self.config.method
        self.projector = mlp(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.criterion = NegativeCosineLoss()

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        momentum = cosine_momentum(self.config.method.momentum, self.progress)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)
        z = self.projector(self.backbone(torch.cat([view0, view1])))
        p0, p1 = self.predictor(z).chunk(2)
        with torch.no_grad():
            t0, t1 = self.target_projector(self.target_backbone(torch.cat([view0, view1]))).chunk(2)
        loss = 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))
        return loss, z.chunk(2)[0]
