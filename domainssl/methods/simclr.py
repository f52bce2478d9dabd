"""SimCLR (Chen et al. 2020): two views, a projection MLP, and the NT-Xent loss."""

from __future__ import annotations

from typing import Any

import torch

from domainssl.losses import NTXentLoss
from domainssl.methods.base import SSLMethod
from domainssl.models.heads import mlp


class SimCLR(SSLMethod):
    """Contrast each view's projection with its pair against all others in the batch."""

    def __init__(
        self, config: dict[str, Any], band_names: list[str], mean: list[float], std: list[float]
    ) -> None:
        super().__init__(config, band_names, mean, std)
        cfg = self.config.method
        self.projector = mlp(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.criterion = NTXentLoss(cfg.temperature)

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.backbone(torch.cat([view0, view1])))  # (2B, proj_dim)
        z0, z1 = z.chunk(2)
        return self.criterion(z0, z1), z0
