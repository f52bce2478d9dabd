"""ORL stage 3 (Xie et al. 2021): object-level BYOL on images, RoIs and mined RoI pairs.

Three BYOL losses share one online and one target network: two global views of the image,
an intra-image pair (two views of one proposal box, each jittered with IoU above
``method.orl_jitter_iou``) and an inter-image pair (a box and its mined partner in a
neighbouring image, from stage 2). Weights ``method.orl_loss_weights`` (1:1:1 default).
Batches come from :class:`~domainssl.data.orl_pairs.PairedSamples`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from domainssl.methods.base import ema_update
from domainssl.methods.byol import BYOL, cosine_momentum
from domainssl.views.object_crops import crop_affine, jitter_boxes, pad_boxes
from domainssl.views.presets import view_pair

PAIR_KEYS = ("views", "intra", "inter")  # batch keys: global, intra-, inter-image pairs
LOSS_NAMES = ("global", "intra", "inter")


class ORL(BYOL):
    """BYOL whose batches add an intra-image and an inter-image RoI pair."""

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Global views, and RoI views cropped from the boxes the samples carry."""
        cfg = self.config
        with torch.no_grad():
            images = batch["image"].float()  # (B, C, H, W)
            neighbors = batch["neighbor"].float()  # (B, C, H, W)
            box = pad_boxes(batch["box"].float(), cfg.views.min_box_fraction)  # (B, 4)
            jitters = [jitter_boxes(box, cfg.method.orl_jitter_iou) for _ in range(2)]
            batch["views"] = view_pair(self.views, images)
            batch["intra"] = tuple(self._roi_view(images, j) for j in jitters)
            batch["inter"] = (
                self._roi_view(images, batch["pair_box"]),
                self._roi_view(neighbors, batch["neighbor_box"]),
            )
        return batch

    def _roi_view(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """A view of each (padded) box: the box resampled, with flips, rotations, colour."""
        views_cfg = self.config.views
        boxes = pad_boxes(boxes.float(), views_cfg.min_box_fraction)
        return self.views(images, crop_affine(boxes, (1.0, 1.0), views_cfg))

    def pair_losses(
        self, pairs: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-sample symmetric BYOL losses of each view pair, in one forward pass.

        Returns one (B,) loss per pair and the online projections of the first pair's view 0.
        """
        momentum = cosine_momentum(self.config.method.momentum, self.progress)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)
        views = torch.cat([torch.cat([v0 for v0, _ in pairs]), torch.cat([v1 for _, v1 in pairs])])
        z = self.projector(self.backbone(views))  # (2 * P * B, D)
        p0, p1 = self.predictor(z).chunk(2)
        with torch.no_grad():
            t0, t1 = self.target_projector(self.target_backbone(views)).chunk(2)
        per_sample = 2 - F.cosine_similarity(p0, t1) - F.cosine_similarity(p1, t0)  # (P * B,)
        return list(per_sample.chunk(len(pairs))), z[: len(pairs[0][0])]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, embedding = self.pair_losses([batch[key] for key in PAIR_KEYS])
        has_pair = batch["has_pair"].float()  # (B,)
        inter = (losses[2] * has_pair).sum() / has_pair.sum().clamp(min=1)
        parts = {"global": losses[0].mean(), "intra": losses[1].mean(), "inter": inter}
        weights = dict(zip(LOSS_NAMES, self.config.method.orl_loss_weights, strict=True))
        loss = sum(weights[name] * value for name, value in parts.items())
        assert isinstance(loss, torch.Tensor)
        self.collapse.update(embedding)
        self.log("train/loss", loss, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value)
        self.log("train/pair_share", has_pair.mean())
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]
        return loss
