"""MAE (He et al. 2022): masked autoencoding with a ViT on N-band images.

The encoder (the exported backbone: timm's ViT, its patch embedding over all bands) sees a
random ``1 - mask_ratio`` of the patches; a light decoder restores the sequence with mask
tokens and predicts every band's pixels of each patch; the loss is the error on the masked
patches (:class:`~domainssl.losses.masked_pixels.MaskedPixelLoss`). One view per image:
the preset's crop, flips and rotations (MAE relies on masking, not on augmentation). As
released, except: the decoder's position embeddings are learned, not fixed sin-cos.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from domainssl.config import MethodConfig
from domainssl.errors import DomainSSLError
from domainssl.losses.masked_pixels import MaskedPixelLoss
from domainssl.methods.base import SSLMethod
from domainssl.methods.registry import register_method
from domainssl.models.backbones import is_vit


class MAEConfig(MethodConfig):
    name: str = "mae"
    mask_ratio: float = 0.75
    """Share of the patches hidden from the encoder (MAE: 0.75)."""
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    normalize_pixels: bool = True
    """Normalize each patch's pixels per band before the loss (MAE's norm_pix_loss)."""


@register_method(MAEConfig, "masked autoencoder: a ViT restores hidden patches, every band")
class MAE(SSLMethod[MAEConfig]):
    """ViT encoder on visible patches + transformer decoder predicting the masked pixels."""

    def build_heads(self) -> None:
        if not is_vit(self.config.model.backbone):
            raise DomainSSLError(
                f"MAE needs a ViT backbone (patches to mask); {self.config.model.backbone} is "
                "not one: use e.g. --backbone vit_tiny_patch16_224."
            )
        cfg, vit = self.settings, self.backbone
        self.patch = int(vit.patch_embed.patch_size[0])  # type: ignore[union-attr, index]
        grid = vit.patch_embed.grid_size  # type: ignore[union-attr]
        patches = int(grid[0] * grid[1])  # type: ignore[index]
        bands = len(self.mean)
        self.decoder_embed = nn.Linear(self.feature_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, patches, cfg.decoder_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        self.decoder = nn.Sequential(
            *[
                Block(cfg.decoder_dim, cfg.decoder_heads, qkv_bias=True)
                for _ in range(cfg.decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        self.predictor = nn.Linear(cfg.decoder_dim, self.patch * self.patch * bands)
        self.criterion = MaskedPixelLoss(self.patch, cfg.normalize_pixels)

    def encode_visible(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder tokens (B, P + n_keep, D) of the prefix (class) tokens and a random subset
        of the patches, and the order ``shuffle`` (B, N) whose first n_keep were kept."""
        vit = self.backbone
        tokens = vit._pos_embed(vit.patch_embed(images))  # type: ignore[operator]  # (B, P + N, D)
        prefix = int(vit.num_prefix_tokens)  # type: ignore[arg-type]
        patches = tokens[:, prefix:]  # (B, N, D)
        keep = max(1, round(patches.shape[1] * (1 - self.settings.mask_ratio)))
        shuffle = torch.rand(patches.shape[:2], device=images.device).argsort(dim=1)
        index = shuffle[:, :keep, None].expand(-1, -1, patches.shape[2])
        visible = torch.cat([tokens[:, :prefix], patches.gather(1, index)], dim=1)
        encoded = vit.norm(vit.blocks(vit.norm_pre(visible)))  # type: ignore[operator]
        return encoded, shuffle

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction loss of ``view0`` (``view1`` is not needed) and the mean
        encoder token of the visible patches (B, D)."""
        encoded, shuffle = self.encode_visible(view0)
        prefix = int(self.backbone.num_prefix_tokens)  # type: ignore[arg-type]
        visible = self.decoder_embed(encoded[:, prefix:])  # (B, n_keep, Dd)
        batch, patches = shuffle.shape
        hidden = self.mask_token.expand(batch, patches - visible.shape[1], -1)
        restore = shuffle.argsort(dim=1)[:, :, None].expand(-1, -1, visible.shape[2])
        sequence = torch.cat([visible, hidden], dim=1).gather(1, restore) + self.decoder_pos
        prediction = self.predictor(self.decoder_norm(self.decoder(sequence)))  # (B, N, p*p*C)
        masked = (restore[:, :, 0] >= visible.shape[1]).float()  # (B, N): 1 = hidden
        loss = self.criterion(prediction, view0, masked)
        return loss, encoded[:, prefix:].mean(dim=1)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """One view per image (the second is a placeholder the base step passes along)."""
        with torch.no_grad():
            view = self.views(batch["image"].float())
            batch["views"] = (view, view)
        return batch
