"""SimSiam (Chen & He 2021): a predictor and a stop-gradient, no negatives, no EMA."""

from __future__ import annotations

import torch

from domainssl.losses import NegativeCosineLoss
from domainssl.methods.base import ProjectionConfig, SSLMethod
from domainssl.methods.registry import register_method
from domainssl.models.heads import mlp


class SimSiamConfig(ProjectionConfig):
    name: str = "simsiam"
    pred_hidden_dim: int = 512
    """Width of the bottleneck predictor."""


@register_method(SimSiamConfig, "predictor + stop-gradient, no negatives, no EMA")
class SimSiam(SSLMethod[SimSiamConfig]):
    """3-layer projector ending in BN, 2-layer bottleneck predictor.

    The loss is ``2 - 2 cos`` (the paper's ``-cos`` up to an affine map).
    """

    def build_heads(self) -> None:
        cfg = self.settings
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
