"""MoCo v2 (Chen et al. 2020): momentum key encoder, a queue of negatives, MLP head.

As in the released code (facebookresearch/moco): the head is fc-ReLU-fc, the loss takes
view 0 as query and view 1 as key, and keys are computed with shuffle-BN, the batch shuffled
across processes so that BatchNorm cannot tell a key's query by shared statistics. On one
process (the paper used 8 GPUs) the shuffled batch is split in two halves with their own
BatchNorm statistics, as two devices would have. Deviations on request: ``method.symmetric``
(both views as queries, MoCo v3's loss) and ``method.head_bn`` (BatchNorm in the head).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from domainssl.losses import QueueInfoNCELoss
from domainssl.losses.gather import (
    gather_no_grad,
    shuffle_across_ranks,
    unshuffle_across_ranks,
    world,
)
from domainssl.methods.base import ProjectionConfig, SSLMethod, ema_update
from domainssl.methods.registry import register_method
from domainssl.models.heads import mlp

SINGLE_PROCESS_SPLITS = 2
"""Shuffle-BN on one process: key BatchNorm statistics per this many shuffled sub-batches
(when each holds at least two samples)."""


class MoCoConfig(ProjectionConfig):
    name: str = "moco"
    temperature: float = 0.2
    """Softmax temperature of the InfoNCE loss."""
    queue_size: int = 4096
    """Negatives kept from earlier batches."""
    momentum: float = 0.99
    """EMA momentum of the key encoder."""
    shuffle_bn: bool = True
    """Compute keys on a shuffled batch (MoCo's shuffle-BN)."""
    symmetric: bool = False
    """Both views as queries and keys (MoCo v3's loss); MoCo v2: view 0 queries only."""
    head_bn: bool = False
    """BatchNorm after the head's hidden layer; MoCo v2's head is fc-ReLU-fc."""


@register_method(MoCoConfig, "v2: momentum key encoder + queue of gathered keys, shuffle-BN")
class MoCo(SSLMethod[MoCoConfig]):
    """Queries from the online encoder, keys from its EMA (shuffle-BN), negatives from a
    queue of earlier keys.

    Keys of every process are gathered before they enter the queue, so the queue is the
    same on all ranks.
    """

    queue: torch.Tensor

    def build_heads(self) -> None:
        cfg = self.settings
        self.projector = mlp(
            self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, hidden_bn=cfg.head_bn
        )
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
        if not self.settings.symmetric:
            q0 = self.projector(self.backbone(view0))
            k1 = self.keys(view1)
            loss = self.criterion(q0, k1, self.queue)
            self.enqueue(k1)
            return loss, q0
        q0, q1 = self.projector(self.backbone(torch.cat([view0, view1]))).chunk(2)
        k1, k0 = self.keys(view1), self.keys(view0)
        loss = 0.5 * (self.criterion(q0, k1, self.queue) + self.criterion(q1, k0, self.queue))
        self.enqueue(torch.cat([k0, k1]))
        return loss, q0

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized key projections (B, proj_dim) of ``images``, with shuffle-BN."""
        if not self.settings.shuffle_bn:
            return F.normalize(self.key_projector(self.key_backbone(images)), dim=1)
        shuffled, order = shuffle_across_ranks(images)
        split = world()[1] == 1 and len(shuffled) >= 2 * SINGLE_PROCESS_SPLITS
        parts = shuffled.chunk(SINGLE_PROCESS_SPLITS) if split else (shuffled,)
        keys = torch.cat([self.key_projector(self.key_backbone(part)) for part in parts])
        return F.normalize(unshuffle_across_ranks(keys, order), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Put the keys of all processes at the front of the queue, dropping the oldest."""
        everyone = gather_no_grad(keys.float())
        self.queue = torch.cat([everyone, self.queue])[: len(self.queue)]
