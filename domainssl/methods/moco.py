"""MoCo v2 (Chen et al. 2020): momentum key encoder, a queue of negatives, MLP head."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from domainssl.losses import QueueInfoNCELoss
from domainssl.losses.gather import gather_no_grad
from domainssl.methods.base import ProjectionConfig, SSLMethod, ema_update
from domainssl.methods.registry import register_method
from domainssl.models.heads import mlp


class MoCoConfig(ProjectionConfig):
    name: str = "moco"
    temperature: float = 0.2
    """Softmax temperature of the InfoNCE loss."""
    queue_size: int = 4096
    """Negatives kept from earlier batches."""
    momentum: float = 0.99
    """EMA momentum of the key encoder."""


@register_method(MoCoConfig, "v2: momentum key encoder + queue of gathered keys")
class MoCo(SSLMethod[MoCoConfig]):
    """Queries from the online encoder, keys from its EMA; symmetric loss over both views.

    Keys of every process are gathered before they enter the queue, so the queue is the
    same on all ranks.
    """

    queue: torch.Tensor

    def build_heads(self) -> None:
        cfg = self.settings
        self.projector = mlp(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.criterion = QueueInfoNCELoss(cfg.temperature)
        queue = F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1)
        self.register_buffer("queue", queue)  # (K, proj_dim), newest keys first

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        momentum = self.settings.momentum
        ema_update(self.key_backbone, self.backbone, momentum)
        ema_update(self.key_projector, self.projector, momentum)
        q0, q1 = self.projector(self.backbone(torch.cat([view0, view1]))).chunk(2)
        with torch.no_grad():
            keys = self.key_projector(self.key_backbone(torch.cat([view1, view0])))
            k1, k0 = F.normalize(keys, dim=1).chunk(2)
        loss = 0.5 * (self.criterion(q0, k1, self.queue) + self.criterion(q1, k0, self.queue))
        self.enqueue(torch.cat([k0, k1]))
        return loss, q0

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Put the keys of all processes at the front of the queue, dropping the oldest."""
        everyone = gather_no_grad(keys)
        self.queue = torch.cat([everyone, self.queue])[: len(self.queue)]
