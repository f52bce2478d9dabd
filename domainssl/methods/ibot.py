"""iBOT (Zhou et al. 2022): DINO plus masked patch-token distillation, the patch-level
objective DINOv2 trains with; ViT backbones only.

On the global crops, some images (``mask_probability``) have a random share of their
patches (``mask_ratio`` range) replaced by a learned mask token before the student sees
them; the student predicts the teacher's (unmasked) patch outputs there
(:class:`~domainssl.losses.masked_patches.MaskedPatchDistillation`), beside DINO's
class-token loss on every crop. One head serves class and patch tokens (iBOT's shared
head). Optional KoLeo spreading of the student's class features (DINOv2). Deviation from
the released code: masks are random patches, not blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.losses.koleo import KoLeoLoss
from domainssl.losses.masked_patches import MaskedPatchDistillation
from domainssl.methods.base import ema_update
from domainssl.methods.byol import cosine_momentum
from domainssl.methods.dino import DINO, DINOConfig
from domainssl.methods.registry import register_method
from domainssl.models.backbones import is_vit


class IBOTConfig(DINOConfig):
    name: str = "ibot"
    teacher_patch_temperature: float = 0.07
    warmup_teacher_patch_temperature: float = 0.04
    mask_probability: float = 0.5
    """Share of the global crops whose patches are masked (iBOT: 0.5)."""
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    """Range of the share of patches masked in a masked crop (iBOT: 0.1-0.5)."""
    patch_loss_weight: float = 1.0
    koleo_weight: float = 0.0
    """Weight of the KoLeo regularizer on the student's class features (DINOv2: 0.1)."""


@register_method(IBOTConfig, "DINO + masked patch-token distillation (ViT; DINOv2's objective)")
class IBOT(DINO):
    """DINO's student and teacher, with masked patch tokens for the student."""

    settings: IBOTConfig

    def build_heads(self) -> None:
        if not is_vit(self.config.model.backbone):
            raise DomainSSLError(
                f"iBOT masks patch tokens, so it needs a ViT; {self.config.model.backbone} is "
                "not one: use e.g. --backbone vit_tiny_patch16_224 (or --method dino)."
            )
        super().build_heads()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.feature_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        cfg = self.settings
        self.patch_criterion = MaskedPatchDistillation(
            cfg.out_dim, cfg.student_temperature, cfg.center_momentum
        )
        self.koleo = KoLeoLoss()

    def tokens(
        self, vit: nn.Module, images: torch.Tensor, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """All output tokens (B, P + N, D) of ``vit``; ``masks`` (B, N) replaces those
        patch embeddings by the mask token."""
        patches = vit.patch_embed(images)  # type: ignore[operator]  # (B, h, w, D) or (B, N, D)
        if masks is not None:
            flat = patches.reshape(len(images), -1, patches.shape[-1])
            flat = torch.where(masks[..., None], self.mask_token.to(flat.dtype), flat)
            patches = flat.view_as(patches)
        x = vit._pos_embed(patches)  # type: ignore[operator]
        return vit.norm(vit.blocks(vit.norm_pre(x)))  # type: ignore[operator]

    def draw_masks(self, images: int, patches: int, device: torch.device) -> torch.Tensor:
        """(images, patches) masks: ``mask_probability`` of the images get a random
        ``mask_ratio`` share of their patches masked."""
        low, high = self.settings.mask_ratio
        ratios = low + (high - low) * torch.rand(images, 1, device=device)
        masked_images = torch.rand(images, 1, device=device) < self.settings.mask_probability
        scores = torch.rand(images, patches, device=device)
        return (scores < ratios) & masked_images

    def patch_temperature(self) -> float:
        cfg = self.settings
        share = min(self.progress / max(cfg.teacher_warmup_fraction, 1e-8), 1.0)
        start, end = cfg.warmup_teacher_patch_temperature, cfg.teacher_patch_temperature
        return start + (end - start) * share

    def dino_loss(
        self, globals_: torch.Tensor, locals_: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Moves the teacher one EMA step; class-token (DINO) + masked patch-token loss (+
        KoLeo), and the student class features of the first global crop (B, D)."""
        cfg = self.settings
        momentum = cosine_momentum(cfg.momentum, self.progress)
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        count, batch = globals_.shape[:2]
        flat = globals_.flatten(0, 1)  # (G * B, C, S, S)
        prefix = int(self.backbone.num_prefix_tokens)  # type: ignore[arg-type]
        with torch.no_grad():
            teacher = self.teacher_head(self.tokens(self.teacher_backbone, flat))  # (GB, P+N, K)
        patches = teacher.shape[1] - prefix
        masks = self.draw_masks(len(flat), patches, flat.device)  # (G * B, N)
        student_tokens = self.tokens(self.backbone, flat, masks)  # (G * B, P + N, D)
        student = self.head(student_tokens)  # (G * B, P + N, K)
        cls = [student[:, 0]]
        if locals_ is not None:
            cls.append(self.head(self.backbone(locals_.flatten(0, 1))))
        outputs = torch.cat(cls).view(-1, batch, cfg.out_dim)  # (V, B, K)
        loss = self.criterion(
            teacher[:, 0].view(count, batch, -1), outputs, self.teacher_temperature()
        )
        patch_shape = (count, batch, patches, cfg.out_dim)
        loss = loss + cfg.patch_loss_weight * self.patch_criterion(
            teacher[:, prefix:].reshape(patch_shape), student[:, prefix:].reshape(patch_shape),
            masks.view(count, batch, patches), self.patch_temperature(),
        )  # fmt: skip
        features = student_tokens[:, 0]  # (G * B, D)
        if cfg.koleo_weight:
            loss = (
                loss
                + cfg.koleo_weight
                * sum(self.koleo(part) for part in features.view(count, batch, -1))
                / count
            )
        return loss, features[:batch]
