"""SimCLR (Chen et al. 2020): two views, a projection MLP, and the NT-Xent loss."""

from __future__ import annotations

import torch

from domainssl.losses import NTXentLoss
from domainssl.methods.base import ProjectionConfig, SSLMethod
from domainssl.methods.registry import register_method
from domainssl.models.heads import mlp


class SimCLRConfig(ProjectionConfig):
    name: str = "simclr"
    temperature: float = 0.2
    """Softmax temperature of NT-Xent."""


@register_method(SimCLRConfig, "NT-Xent on two views, negatives gathered across processes")
class SimCLR(SSLMethod[SimCLRConfig]):
    """Contrast each view's projection with its pair against all others in the batch."""

    def build_heads(self) -> None:
        cfg = self.settings
        self.projector = mlp(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.criterion = NTXentLoss(cfg.temperature)

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.backbone(torch.cat([view0, view1])))  # (2B, proj_dim)
        z0, z1 = z.chunk(2)
        return self.criterion(z0, z1), z0
