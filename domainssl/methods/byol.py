"""BYOL (Grill et al. 2020): predict an EMA target's projection of the other view."""

from __future__ import annotations

import copy
import math

import torch

from domainssl.losses import NegativeCosineLoss
from domainssl.methods.base import ProjectionConfig, SSLMethod, ema_update
from domainssl.methods.registry import register_method
from domainssl.models.heads import mlp


class BYOLConfig(ProjectionConfig):
    name: str = "byol"
    pred_hidden_dim: int = 512
    """Width of the predictor MLP."""
    momentum: float = 0.99
    """Base EMA momentum of the target, raised to 1 on a cosine schedule."""


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: ``1 - (1 - base) * (cos(pi * progress) + 1) / 2``, from base to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@register_method(BYOLConfig, "EMA target predicted by the online network (cosine momentum)")
class BYOL(SSLMethod[BYOLConfig]):
    """Online backbone + projector + predictor; target = EMA of backbone + projector."""

    def build_heads(self) -> None:
        cfg = self.settings
        self.projector = mlp(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.criterion = NegativeCosineLoss(reduction="none")

    def per_sample_losses(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Moves the target one EMA step, then the symmetric loss of each view pair (B,)
        (each view's prediction against the target of the other) and the online
        projections of ``view0`` (B, proj_dim)."""
        momentum = cosine_momentum(self.settings.momentum, self.progress)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)
        z = self.projector(self.backbone(torch.cat([view0, view1])))  # (2B, proj_dim)
        p0, p1 = self.predictor(z).chunk(2)
        with torch.no_grad():
            t0, t1 = self.target_projector(self.target_backbone(torch.cat([view0, view1]))).chunk(2)
        losses = 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))  # (B,)
        return losses, z.chunk(2)[0]

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        losses, embedding = self.per_sample_losses(view0, view1)
        return losses.mean(), embedding
