"""DenseCL (Wang et al. 2021, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training", CVPR): MoCo v2's global contrast plus a dense, per-location one, for CNNs.

As in the released code (WXinlong/DenseCL, ``openselfsup/models/densecl.py`` and
``necks.py`` ``DenseCLNeck``):

* the neck holds two heads in parallel on the backbone's last map: a global fc-ReLU-fc on
  the pooled features (MoCo v2's head) and a dense conv1x1-ReLU-conv1x1 on every location;
  the momentum key encoder is the EMA of backbone and both heads; keys use shuffle-BN;
* correspondence: each query location is paired with the key location whose *backbone*
  feature (not projection) has the highest cosine similarity;
* the dense negatives are a second queue holding one key per image and step: the key
  view's dense projections averaged over its locations (as the paper describes them: a
  pooled vector of a view of another image), not single locations; keys of all processes
  are gathered first;
* loss = (1 - λ) global + λ dense, λ = 0.5; temperature 0.2, momentum 0.999, queues of
  65536 (the code has one queue length for both; here ``dense_queue_size`` sets its own).

Kept from this package's MoCo rather than the code: queues are stored newest first (the
code writes a ring buffer at a pointer: the same keys, other slots, no batch-divides-queue
assertion), and the EMA copies BatchNorm buffers into the key encoder.

Grid: the released configs set ``num_grid=None``: the dense head runs on the backbone map
as it is (7x7 for 224 px on ResNet-50), and this is the default here.
``method.grid_size`` pools the map adaptively to a fixed grid first; unlike the code's
``num_grid`` (which pools the projections but not the matched backbone features), the
pooled map feeds both the matching and the dense head. Small chips give small maps (32 px
with ``model.small_input`` on a ResNet: 2x2): raise ``views.crop_size`` for a finer grid;
a 1x1 map leaves the dense loss a second global loss, and the run warns.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.losses import QueueInfoNCELoss
from domainssl.losses.dense_infonce import DenseInfoNCELoss, push_keys
from domainssl.losses.gather import shuffle_across_ranks, unshuffle_across_ranks, world
from domainssl.methods.base import ProjectionConfig, SSLMethod, ema_update
from domainssl.methods.moco import SINGLE_PROCESS_SPLITS
from domainssl.methods.registry import register_method
from domainssl.models.backbones import is_vit
from domainssl.models.heads import mlp


class DenseCLConfig(ProjectionConfig):
    name: str = "densecl"
    temperature: float = 0.2
    """Softmax temperature of both InfoNCE losses."""
    queue_size: int = 65536
    """Global negatives kept from earlier batches."""
    dense_queue_size: int = 65536
    """Dense negatives kept from earlier batches (one pooled dense key per image)."""
    momentum: float = 0.999
    """EMA momentum of the key encoder (backbone and both heads)."""
    dense_weight: float = Field(0.5, ge=0.0, le=1.0)
    """λ in loss = (1 - λ) global + λ dense."""
    grid_size: int | None = Field(None, ge=1)
    """Pool the backbone map to grid_size x grid_size first (None: the map as it is)."""


@register_method(DenseCLConfig, "MoCo v2 + dense contrast of locations matched by features (CNN)")
class DenseCL(SSLMethod[DenseCLConfig]):
    """Global and dense queries from the online encoder; keys from its EMA (shuffle-BN);
    negatives from a global and a dense queue of earlier keys (the same on all ranks)."""

    queue: torch.Tensor
    dense_queue: torch.Tensor

    def build_heads(self) -> None:
        if is_vit(self.config.model.backbone):
            raise DomainSSLError(
                f"DenseCL contrasts the locations of a CNN's feature map; "
                f"{self.config.model.backbone} is a ViT (tokens, no map): use a ResNet "
                "(--backbone resnet18) or, for ViTs, --method ibot."
            )
        cfg = self.settings
        hidden, out = cfg.proj_hidden_dim, cfg.proj_dim
        self.projector = mlp(self.feature_dim, hidden, out, hidden_bn=False)
        self.dense_projector = nn.Sequential(
            nn.Conv2d(self.feature_dim, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, out, 1)
        )
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.key_dense_projector = copy.deepcopy(self.dense_projector).requires_grad_(False)
        self.criterion = QueueInfoNCELoss(cfg.temperature)
        self.dense_criterion = DenseInfoNCELoss(cfg.temperature)
        queue = F.normalize(torch.randn(cfg.queue_size, out), dim=1)
        self.register_buffer("queue", queue)  # (K, proj_dim), newest keys first
        dense_queue = F.normalize(torch.randn(cfg.dense_queue_size, out), dim=1)
        self.register_buffer("dense_queue", dense_queue)  # (K', proj_dim), newest first
        self.parts: dict[str, torch.Tensor] = {}

    def encode(
        self, backbone: nn.Module, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (B, C) (the exported backbone's output) and the backbone map
        (B, C, S, S') the dense head and the matching see."""
        maps = backbone.forward_features(images)  # type: ignore[operator]  # (B, C, h, w)
        if maps.dim() != 4 or maps.shape[1] != self.feature_dim:
            raise DomainSSLError(
                f"DenseCL needs channel-first feature maps (B, {self.feature_dim}, h, w); "
                f"{self.config.model.backbone} gives {tuple(maps.shape)}: use a ResNet."
            )
        pooled = backbone.forward_head(maps)  # type: ignore[operator]  # (B, C)
        size = self.settings.grid_size
        return pooled, maps if size is None else F.adaptive_avg_pool2d(maps, size)

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.settings
        ema_update(self.key_backbone, self.backbone, cfg.momentum)
        ema_update(self.key_projector, self.projector, cfg.momentum)
        ema_update(self.key_dense_projector, self.dense_projector, cfg.momentum)
        pooled, grid = self.encode(self.backbone, view0)  # (B, C), (B, C, S, S')
        if grid.shape[2:].numel() == 1:
            small = "" if self.config.model.small_input else " or set model.small_input=true"
            warnings.warn(
                f"DenseCL: the backbone map of {view0.shape[-1]} px views is 1x1, so the dense "
                f"loss has one location per image: raise views.crop_size{small}.",
                stacklevel=1,
            )
        q = self.projector(pooled)  # (B, proj_dim)
        q_dense = self.dense_projector(grid)  # (B, proj_dim, S, S')
        k, k_dense, k_grid = self.keys(view1)
        global_loss = self.criterion(q, k, self.queue)
        dense_loss = self.dense_criterion(q_dense, k_dense, grid, k_grid, self.dense_queue)
        self.queue = push_keys(self.queue, k)
        pooled_keys = F.normalize(k_dense.mean(dim=(2, 3)), dim=1)  # (B, proj_dim)
        self.dense_queue = push_keys(self.dense_queue, pooled_keys)
        self.parts = {
            "train/loss_global": global_loss.detach(),
            "train/loss_dense": dense_loss.detach(),
        }
        return (1 - cfg.dense_weight) * global_loss + cfg.dense_weight * dense_loss, q

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Key encoder outputs with shuffle-BN (as MoCo's keys): normalized global keys
        (B, proj_dim), dense key projections (B, proj_dim, S, S') and the key backbone map
        (B, C, S, S')."""
        shuffled, order = shuffle_across_ranks(images)
        split = world()[1] == 1 and len(shuffled) >= 2 * SINGLE_PROCESS_SPLITS
        outputs = []
        for part in shuffled.chunk(SINGLE_PROCESS_SPLITS) if split else (shuffled,):
            pooled, grid = self.encode(self.key_backbone, part)
            outputs.append((self.key_projector(pooled), self.key_dense_projector(grid), grid))
        k, k_dense, k_grid = (
            unshuffle_across_ranks(torch.cat(columns), order)
            for columns in zip(*outputs, strict=True)
        )
        return F.normalize(k, dim=1), k_dense, k_grid

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log_dict(self.parts, on_step=True, on_epoch=True, sync_dist=True)
        return loss
