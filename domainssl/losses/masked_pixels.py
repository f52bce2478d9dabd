"""MAE's reconstruction loss (He et al. 2022): mean squared error of the predicted pixels of
the masked patches, each patch's pixels normalized per band first (``norm_pix_loss``, the
released code's better setting; per band here, so that N-band patches are comparable)."""

from __future__ import annotations

import torch
from torch import nn

from domainssl.losses.precision import in_float32


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) images to (B, N, patch * patch, C) patches, row by row."""
    b, c, h, w = images.shape
    grid = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch, c)


class MaskedPixelLoss(nn.Module):
    """MSE on masked patches between predictions and per-patch, per-band normalized pixels.

    Args:
        patch: patch side (px).
        normalize: normalize each patch's pixels per band (mean 0, variance 1) first.
    """

    def __init__(self, patch: int, normalize: bool = True) -> None:
        super().__init__()
        self.patch, self.normalize = patch, normalize

    @in_float32
    def forward(
        self, prediction: torch.Tensor, images: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        """``prediction`` (B, N, patch * patch * C), ``images`` (B, C, H, W), ``masked``
        (B, N) 1 where a patch was hidden from the encoder."""
        target = patchify(images, self.patch)  # (B, N, P, C)
        if prediction.shape != target.flatten(2).shape or masked.shape != target.shape[:2]:
            raise ValueError(
                f"shapes do not fit: prediction {prediction.shape}, patches {target.shape}, "
                f"mask {masked.shape}"
            )
        if self.normalize:
            mean = target.mean(dim=2, keepdim=True)
            var = target.var(dim=2, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        error = ((prediction - target.flatten(2)) ** 2).mean(dim=-1)  # (B, N)
        return (error * masked).sum() / masked.sum().clamp(min=1)
