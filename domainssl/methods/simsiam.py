"""SimSiam (Chen & He 2021): a predictor and a stop-gradient, no negatives, no EMA."""

from __future__ import annotations

from typing import Any

import torch

from domainssl.losses import NegativeCosineLoss
from domainssl.methods.base import SSLMethod
from domainssl.models.heads import mlp


class SimSiam(SSLMethod):
    """3-layer projector ending in BN, 2-layer bottleneck predictor.

    The loss is ``2 - 2 cos`` (the paper's ``-cos`` up to an affine map).
    """

    def __init__(
        self, config: dict[str, Any], band_names: list[str], mean: list[float], std: list[float]
    ) -> None:
        super().__init__(config, band_names, mean, std)
        cfg = self.config.method
        self.projector = mlp(
            self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, layers=3, last_bn=True
        )
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.criterion = NegativeCosineLoss()

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z0, z1 = self.projector(self.backbone(torch.cat([view0, view1]))).chunk(2)
        p0, p1 = self.predictor(torch.cat([z0, z1])).chunk(2)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return loss, z0
