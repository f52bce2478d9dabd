"""Segmentation model: a timm feature encoder carrying the pretrained backbone + a light
UNet-style decoder that returns logits at input resolution. A ViT backbone becomes an
encoder through a simple feature pyramid built from its last block (ViTDet, Li et al. 2022)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureInfo
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, backbone_for
from domainssl.models.backbones import is_vit
from domainssl.transfer.outputs import read_transfer_output


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU, as in a UNet stage."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Segmenter(nn.Module):
    """Encoder features (shallow to deep) fused top-down UNet-style; logits at input size.

    Deeper features are upsampled to the size of the next shallower one at run time, so
    any stride pattern (e.g. the small-input stem without max-pool) works.
    """

    def __init__(
        self, encoder: nn.Module, channels: list[int], num_classes: int, width: int = 64
    ) -> None:
        super().__init__()
        self.encoder = encoder
        in_channels = channels[-1]
        self.stages = nn.ModuleList()
        for skip_channels in reversed(channels[:-1]):
            self.stages.append(_conv_block(in_channels + skip_channels, width))
            in_channels = width
        self.head = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)  # [(B, C_i, H / r_i, W / r_i)], r_i increasing
        x = features[-1]
        for stage, skip in zip(self.stages, reversed(features[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))  # (B, width, h_i, w_i)
        logits = self.head(x)  # (B, K, H / r_0, W / r_0)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class ViTPyramid(nn.Module):
    """A ViT's last-block patch tokens as a map (stride = patch size) and, from it alone,
    the other levels of ViTDet's simple feature pyramid: 2x finer (upsampled; ViTDet learns
    this step, the decoder does here), 2x and 4x coarser (max-pooled). No weights of its own:
    freezing the encoder freezes exactly the pretrained ViT, whose keys it keeps."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.channels = [int(vit.num_features)] * 4  # type: ignore[arg-type]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.vit.forward_features(images)  # type: ignore[operator]  # (B, P + N, D)
        patch: tuple[int, int] = self.vit.patch_embed.patch_size  # type: ignore[union-attr, assignment]
        height, width = images.shape[-2] // patch[0], images.shape[-1] // patch[1]
        prefix = int(self.vit.num_prefix_tokens)  # type: ignore[arg-type]
        grid = tokens[:, prefix:].transpose(1, 2).reshape(len(images), -1, height, width)
        finer = F.interpolate(grid, scale_factor=2.0, mode="bilinear", align_corners=False)
        coarse = F.max_pool2d(grid, 2, ceil_mode=True)
        return [finer, grid, coarse, F.max_pool2d(grid, 4, ceil_mode=True)]


def _canonical(key: str) -> str:
    return key.replace("_", ".")


def map_encoder_state(
    encoder: nn.Module, backbone_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The encoder's state dict filled from ``backbone.safetensors`` (keys of ``create_backbone``).

    timm's ``features_only`` wrappers drop the head and may flatten the first level of
    sequential containers (``stem.0.weight`` -> ``stem_0.weight``): keys are matched with
    ``_`` and ``.`` taken as equal. Every encoder tensor must be found, with its shape.
    """
    by_key = {_canonical(k): v for k, v in backbone_state.items()}
    if len(by_key) != len(backbone_state):
        raise DomainSSLError("Backbone keys collide once '_' and '.' are equated: cannot map.")
    mapped, missing = {}, []
    for key, target in encoder.state_dict().items():
        source = by_key.get(_canonical(key))
        if source is None or source.shape != target.shape:
            missing.append(key)
        else:
            mapped[key] = source
    if missing:
        raise DomainSSLError(
            f"The exported backbone lacks {len(missing)} encoder weight(s) or has other shapes "
            f"(e.g. {missing[:3]}): it was not trained with this architecture and band count. "
            "Re-export it, or check timm_name / in_chans in backbone.json."
        )
    return mapped


def build_segmenter(
    meta: BackboneMeta,
    num_classes: int,
    encoder_state: dict[str, torch.Tensor] | None,
    decoder_width: int = 64,
) -> Segmenter:
    """A segmenter whose encoder carries the pretrained backbone (``None``: random init)."""
    if is_vit(meta.timm_name):
        vit = backbone_for(meta)
        if encoder_state is not None:
            vit.load_state_dict(encoder_state)
        pyramid = ViTPyramid(vit)
        return Segmenter(pyramid, pyramid.channels, num_classes, decoder_width)
    encoder = timm.create_model(
        meta.timm_name, pretrained=False, features_only=True, in_chans=meta.in_chans
    )
    if meta.small_input and isinstance(getattr(encoder, "maxpool", None), nn.MaxPool2d):
        encoder.maxpool = nn.Identity()  # as in create_backbone
    if encoder_state is not None:
        encoder.load_state_dict(map_encoder_state(encoder, encoder_state), strict=True)
    feature_info = encoder.feature_info
    assert isinstance(feature_info, FeatureInfo)  # every features_only timm model has one
    return Segmenter(encoder, feature_info.channels(), num_classes, decoder_width)


def load_segmenter(model_dir: Path) -> tuple[Segmenter, BackboneMeta, dict[str, Any]]:
    """A segmentation transfer folder as (model in eval mode, backbone metadata, model.json)."""
    info, meta, state = read_transfer_output(model_dir, "domainssl transfer --task segment")
    model = build_segmenter(meta, info["num_classes"], None)
    model.load_state_dict(state)
    return model.eval(), meta, info
