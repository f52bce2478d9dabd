"""The AGW re-ID network (Ye et al. 2021) around a pretrained ResNet: one stem for both
modalities or one per modality (as the pretraining run had), shared deep stages with
optional non-local blocks, a last stage without downsampling, GeM pooling, a BNNeck and an
identity classifier."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from domainssl.data.reid import IR, RGB
from domainssl.errors import DomainSSLError
from domainssl.methods.mmgl import STEM, TRUNK, run_stem
from domainssl.models.reid_parts import (
    BNNeck,
    GeneralizedMeanPooling,
    remove_last_downsampling,
    stage_channels,
    with_non_local,
)

NON_LOCAL_BLOCKS = {"layer2": 2, "layer3": 3}
"""AGW's ``non_layers = [0, 2, 3, 0]``: after the last 2 blocks of stage 2, 3 of stage 3."""


class ReidNet(nn.Module):
    """Person images (B, 3, H, W) of either modality -> pooled features and identity logits.

    Args:
        backbone: a ResNet-family timm backbone (conv1 ... layer4), pretrained or random.
        classes: training identities.
        ir_stem: a module holding a separate infrared stem (conv1, bn1, act1, maxpool; a
            two-stream run's infrared backbone), or None for one stream.
        non_local: insert AGW's non-local blocks.
    """

    def __init__(
        self,
        backbone: nn.Module,
        classes: int,
        ir_stem: nn.Module | None = None,
        non_local: bool = False,
    ) -> None:
        super().__init__()
        if not all(hasattr(backbone, name) for name in STEM + TRUNK):
            raise DomainSSLError(
                f"Re-ID fine-tuning builds AGW on a ResNet-family backbone (conv1 ... layer4); "
                f"{type(backbone).__name__} is not one: pretrain with a ResNet."
            )
        self.backbone = backbone
        self.ir_stem = (
            nn.ModuleDict({name: getattr(ir_stem, name) for name in STEM})
            if ir_stem is not None else None
        )  # fmt: skip
        if non_local:
            for name, blocks in NON_LOCAL_BLOCKS.items():
                stage = getattr(backbone, name)
                blocks = min(blocks, len(stage))
                setattr(backbone, name, with_non_local(stage, blocks, stage_channels(stage)))
        last_stage = cast(nn.Sequential, backbone.layer4)
        remove_last_downsampling(last_stage)
        dim = stage_channels(last_stage)
        self.pool = GeneralizedMeanPooling(3.0)
        self.neck = BNNeck(dim)
        self.classifier = nn.Linear(dim, classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.feature_dim = dim

    def pooled(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """GeM-pooled features (B, D) before the BNNeck (what the triplet loss sees)."""
        if self.ir_stem is None:
            maps = run_stem(self.backbone, images)
        else:
            infrared = modality == IR
            maps = torch.empty(0)
            parts = {RGB: ~infrared, IR: infrared}
            for kind, chosen in parts.items():
                if not bool(chosen.any()):
                    continue
                stem = self.ir_stem if kind == IR else self.backbone
                part = run_stem(stem, images[chosen])
                if maps.numel() == 0:
                    maps = part.new_empty(len(images), *part.shape[1:])
                maps[chosen] = part
        for name in TRUNK:
            maps = getattr(self.backbone, name)(maps)
        return self.pool(maps)

    def forward(
        self, images: torch.Tensor, modality: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features (B, D), identity logits (B, classes))."""
        pooled = self.pooled(images, modality)
        return pooled, self.classifier(self.neck(pooled))

    def embed(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Retrieval features (B, D): after the BNNeck, as AGW evaluates."""
        return self.neck(self.pooled(images, modality))


class ModalityEncoder(nn.Module):
    """A fine-tuned :class:`ReidNet` seen as a backbone of one modality (for retrieval)."""

    def __init__(self, network: ReidNet, modality: int) -> None:
        super().__init__()
        self.network, self.modality = network, modality

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        modality = torch.full((len(images),), self.modality, device=images.device)
        return self.network.embed(images, modality)
