"""DINO (Caron et al. 2021): self-distillation with no labels, as in the released code.

A student (backbone + DINO head) predicts, for every crop, the output of an EMA teacher on
the two global crops; the teacher's outputs are centered (an EMA of their mean over all
processes) and sharpened by a temperature that warms up from 0.04. Multi-crop comes from
the domain's view preset (:mod:`domainssl.views.multicrop`). Works with CNN and ViT
backbones; the last layer of the head is frozen for the first share of the run.
"""

from __future__ import annotations

import copy

import torch

from domainssl.config import MethodConfig
from domainssl.losses.dino import DINOLoss
from domainssl.methods.base import SSLMethod, ema_update
from domainssl.methods.byol import cosine_momentum
from domainssl.methods.registry import register_method
from domainssl.models.heads import DINOHead
from domainssl.views.multicrop import MultiCropViews
from domainssl.views.settings import CropViewsConfig


class DINOConfig(MethodConfig):
    name: str = "dino"
    out_dim: int = 4096
    """Prototypes of the head (DINO: 65536 on ImageNet; fewer suit smaller data sets)."""
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    """Teacher temperature after the warm-up (DINO: 0.04-0.07)."""
    warmup_teacher_temperature: float = 0.04
    teacher_warmup_fraction: float = 0.1
    """Share of the run over which the teacher temperature rises linearly (DINO: 30 epochs)."""
    center_momentum: float = 0.9
    momentum: float = 0.996
    """Base EMA momentum of the teacher, raised to 1 on a cosine schedule."""
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crops: int = 6
    local_crop_size: int | None = None
    """Side of the local crops; None: 0.43 x the views' crop size (DINO: 96 at 224)."""
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    norm_last_layer: bool = True
    freeze_last_layer_fraction: float = 0.01
    """Share of the run during which the head's last layer does not learn (DINO: 1 epoch)."""


@register_method(DINOConfig, "self-distillation to an EMA teacher with multi-crop, centering")
class DINO(SSLMethod[DINOConfig]):
    """Student and EMA teacher (backbone + DINO head); the loss sees every crop."""

    def build_heads(self) -> None:
        cfg, views = self.settings, self.config.views
        self.head = DINOHead(
            self.feature_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.norm_last_layer
        )
        self.teacher_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.criterion = DINOLoss(cfg.out_dim, cfg.student_temperature, cfg.center_momentum)
        assert isinstance(views, CropViewsConfig)  # MultiCropViews says so when it is not
        patch_embed = getattr(self.backbone, "patch_embed", None)  # ViTs: whole patches
        step = int(patch_embed.patch_size[0]) if patch_embed is not None else 1
        local_size = cfg.local_crop_size or max(step, round(views.crop_size * 0.43 / step) * step)
        self.multicrop = MultiCropViews(
            views, self.mean, self.std, cfg.global_crop_scale, local_size, cfg.local_crop_scale,
            cfg.local_crops,
        )  # fmt: skip

    def teacher_temperature(self) -> float:
        """Linear warm-up to ``teacher_temperature`` over the first share of the run."""
        cfg = self.settings
        share = min(self.progress / max(cfg.teacher_warmup_fraction, 1e-8), 1.0)
        start, end = cfg.warmup_teacher_temperature, cfg.teacher_temperature
        return start + (end - start) * share

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Global (G, B, C, S, S) and local (L, B, C, s, s) crops, on the batch's device."""
        with torch.no_grad():
            batch["crops"] = self.multicrop(batch["image"].float())
        return batch

    def dino_loss(
        self, globals_: torch.Tensor, locals_: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Moves the teacher one EMA step, then the DINO loss of the crops and the student
        features of the first global crop (B, D)."""
        momentum = cosine_momentum(self.settings.momentum, self.progress)
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        count, batch = globals_.shape[:2]
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(globals_.flatten(0, 1)))
        features = self.backbone(globals_.flatten(0, 1))  # (G * B, D)
        student = [self.head(features)]
        if locals_ is not None:  # one pass for all local crops (their own size)
            student.append(self.head(self.backbone(locals_.flatten(0, 1))))
        outputs = torch.cat(student).view(-1, batch, self.settings.out_dim)  # (V, B, K)
        loss = self.criterion(teacher.view(count, batch, -1), outputs, self.teacher_temperature())
        return loss, features[:batch]

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of two global crops alone (no local crops)."""
        return self.dino_loss(torch.stack([view0, view1]), None)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, embedding = self.dino_loss(*batch["crops"])
        self.collapse.update(embedding)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/teacher_temperature", self.teacher_temperature())
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The head's last layer does not learn during the first share of the run."""
        if self.progress < self.settings.freeze_last_layer_fraction:
            for param in self.head.last_layer.parameters():
                param.grad = None
