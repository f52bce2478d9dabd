"""MMGL (Wan et al. 2021, "Self-supervised Modality-Aware Multiple Granularity Pre-Training
for RGB-Infrared Person Re-Identification"; IEEE TIFS 2023) for unpaired RGB-IR images.

Two tasks on each unpaired (RGB, infrared) pair:

* modality-aware permutation recovery: both images have their horizontal stripes shuffled by
  one permutation from a fixed set and a shared classifier predicts it from the stripe
  features in order, so both modalities map into one permutation-aware space;
* part-aware cycle-contrastive learning: projected stripe (part) features of RGB and IR
  that are mutual nearest neighbours in the batch are pulled together (InfoNCE).

One stream (one backbone for both) or two streams (a separate shallow stem per modality,
shared deep layers; the IR variant is exported as ``backbone_ir.safetensors``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.io import atomic_write
from domainssl.losses.part_cycle import PartCycleContrastiveLoss
from domainssl.losses.permutation import PermutationRecoveryLoss
from domainssl.methods.base import ProjectionConfig, SSLMethod
from domainssl.methods.registry import register_method
from domainssl.models.backbones import is_vit
from domainssl.models.heads import mlp
from domainssl.views.presets import ReidViews

STEM = ("conv1", "bn1", "act1", "maxpool")
TRUNK = ("layer1", "layer2", "layer3", "layer4")
IR_WEIGHTS = "backbone_ir.safetensors"
"""Two-stream runs: the backbone with the infrared stem, beside ``backbone.safetensors``."""


def run_stem(stem: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The shallow modality-specific layers (conv1, bn1, act1, maxpool) in order."""
    for name in STEM:
        images = getattr(stem, name)(images)
    return images


class MMGLConfig(ProjectionConfig):
    name: str = "mmgl"
    default_preset: ClassVar[str | None] = "reid"
    stripes: int = 4
    """Horizontal stripes (parts) each person image is cut into."""
    permutations: int = 24
    """Size of the fixed stripe-permutation set (at most stripes!)."""
    cycle_weight: float = 1.0
    """Weight of the part-aware cycle-contrastive loss."""
    cycle_temperature: float = 0.1
    """Softmax temperature of the part-aware cycle-contrastive loss."""
    two_stream: bool = False
    """Separate RGB / infrared stems with shared deep layers (else one stream)."""


@register_method(MMGLConfig, "RGB-IR re-ID: stripe permutation + part cycle-contrast")
class MMGL(SSLMethod[MMGLConfig]):
    """Backbone (one or two streams) + permutation classifier + part projector."""

    def build_heads(self) -> None:
        if not isinstance(self.views, ReidViews):
            raise DomainSSLError("MMGL needs the re-ID views: set views.preset=reid.")
        cfg = self.settings
        self.stripes = cfg.stripes
        self.recovery = PermutationRecoveryLoss(
            cfg.stripes, cfg.permutations, self.config.trainer.seed
        )
        self.classifier = mlp(self.feature_dim * cfg.stripes, cfg.proj_hidden_dim, cfg.permutations)
        self.projector = mlp(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.cycle = PartCycleContrastiveLoss(cfg.cycle_temperature)
        self.ir_stem: nn.ModuleDict | None = None
        if cfg.two_stream:
            if not all(hasattr(self.backbone, name) for name in STEM + TRUNK):
                raise DomainSSLError(
                    f"method.two_stream needs a ResNet-family backbone (conv1 ... layer4); "
                    f"{self.config.model.backbone} is not one: set method.two_stream=false."
                )
            self.ir_stem = nn.ModuleDict(
                {name: copy.deepcopy(getattr(self.backbone, name)) for name in STEM}
            )
        if is_vit(self.config.model.backbone):
            raise DomainSSLError(
                f"MMGL pools horizontal stripes of a CNN's feature maps; "
                f"{self.config.model.backbone} is a ViT (tokens, no maps): use a ResNet."
            )
        self.stats: dict[str, float] = {}

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Standardized views of the unpaired RGB and infrared images (B, 3, H, W) each."""
        with torch.no_grad():
            batch["views"] = (
                self.views(batch["rgb"].float(), infrared=False),
                self.views(batch["ir"].float(), infrared=True),
            )
        return batch

    def feature_maps(self, rgb: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Backbone feature maps (2B, D, h, w) of RGB then infrared images."""
        if self.ir_stem is None:
            return self.backbone.forward_features(torch.cat([rgb, ir]))  # type: ignore[operator]
        maps = torch.cat([run_stem(self.backbone, rgb), run_stem(self.ir_stem, ir)])
        for name in TRUNK:
            maps = getattr(self.backbone, name)(maps)
        return maps

    def part_features(self, rgb: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Stripe features (2B, S, D): feature maps average-pooled per horizontal stripe."""
        maps = self.feature_maps(rgb, ir)  # (2B, D, h, w)
        return F.adaptive_avg_pool2d(maps, (self.stripes, 1)).squeeze(-1).transpose(1, 2)

    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``view0``: RGB views, ``view1``: infrared views of other persons (B, 3, H, W)."""
        labels = self.recovery.draw(len(view0))  # (B,) one permutation per pair
        parts = self.part_features(
            self.recovery.shuffle(view0, labels), self.recovery.shuffle(view1, labels)
        )  # (2B, S, D)
        logits = self.classifier(parts.flatten(1))  # (2B, P) shared by both modalities
        targets = labels.repeat(2)
        permutation_loss = self.recovery(logits, targets)
        z = self.projector(parts.flatten(0, 1))  # (2B*S, proj_dim)
        z_rgb, z_ir = z.chunk(2)
        cycle_loss = self.cycle(z_rgb, z_ir)
        with torch.no_grad():
            self.stats = {
                "train/perm_loss": float(permutation_loss),
                "train/perm_acc": float((logits.argmax(1) == targets).float().mean()),
                "train/cycle_loss": float(cycle_loss),
                "train/cycle_pairs": self.cycle.pairs / len(z_rgb) / max(1, self._world()),
            }
        loss = permutation_loss + self.settings.cycle_weight * cycle_loss
        return loss, z_rgb

    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log_dict(self.stats, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def ir_backbone_state(self) -> dict[str, torch.Tensor]:
        """The backbone's weights with the infrared stem in place of the RGB one."""
        assert self.ir_stem is not None
        state = dict(self.backbone.state_dict())
        state.update(self.ir_stem.state_dict())
        return {key: value.detach().cpu().contiguous() for key, value in state.items()}

    def on_train_end(self) -> None:
        """Two streams: export the infrared variant beside the run's backbone."""
        super().on_train_end()
        if self.ir_stem is not None and self.trainer.is_global_zero:
            state = self.ir_backbone_state()
            out = Path(self.trainer.default_root_dir) / IR_WEIGHTS
            atomic_write(out, lambda tmp: save_file(state, str(tmp)))
