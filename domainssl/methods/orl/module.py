"""ORL stage 3 (Xie et al. 2021): object-level BYOL on images, RoIs and mined RoI pairs.

Three BYOL losses share one online and one target network: two global views of the image,
an intra-image pair (two views of one proposal box, each jittered with IoU above
``method.orl_jitter_iou``) and an inter-image pair (a box and its mined partner in a
neighbouring image, from stage 2). Weights ``method.orl_loss_weights`` (1:1:1 default).
Batches come from :class:`~domainssl.methods.orl.pairs.PairedSamples`.
"""

from __future__ import annotations

import torch

from domainssl.methods.byol import BYOL
from domainssl.methods.orl.config import ORLConfig, crop_views
from domainssl.views.object_crops import crop_affine, jitter_boxes, pad_boxes
from domainssl.views.presets import view_pair
from domainssl.views.settings import CropViewsConfig

PAIR_KEYS = ("views", "intra", "inter")  # batch keys: global, intra-, inter-image pairs
LOSS_NAMES = ("global", "intra", "inter")


class ORL(BYOL):
    """BYOL whose batches add an intra-image and an inter-image RoI pair."""

    settings: ORLConfig

    def build_heads(self) -> None:
        self.crop_views: CropViewsConfig = crop_views(self.config)
        super().build_heads()

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Global views, and RoI views cropped from the boxes the samples carry."""
        with torch.no_grad():
            images = batch["image"].float()  # (B, C, H, W)
            neighbors = batch["neighbor"].float()  # (B, C, H, W)
            box = pad_boxes(batch["box"].float(), self.crop_views.min_box_fraction)  # (B, 4)
            jitters = [jitter_boxes(box, self.settings.orl_jitter_iou) for _ in range(2)]
            batch["views"] = view_pair(self.views, images)
            batch["intra"] = tuple(self._roi_view(images, j) for j in jitters)
            batch["inter"] = (
                self._roi_view(images, batch["pair_box"]),
                self._roi_view(neighbors, batch["neighbor_box"]),
            )
        return batch

    def _roi_view(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """A view of each (padded) box: the box resampled, with flips, rotations, colour."""
        boxes = pad_boxes(boxes.float(), self.crop_views.min_box_fraction)
        return self.views(images, crop_affine(boxes, (1.0, 1.0), self.crop_views))

    def pair_losses(
        self, pairs: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-sample symmetric BYOL losses of each view pair, in one forward pass.

        Returns one (B,) loss per pair and the online projections of the first pair's view 0.
        """
        view0 = torch.cat([v0 for v0, _ in pairs])  # (P * B, C, S, S)
        view1 = torch.cat([v1 for _, v1 in pairs])
        losses, embedding = self.per_sample_losses(view0, view1)  # (P * B,), (P * B, D)
        return list(losses.chunk(len(pairs))), embedding[: len(pairs[0][0])]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, embedding = self.pair_losses([batch[key] for key in PAIR_KEYS])
        has_pair = batch["has_pair"].float()  # (B,)
        inter = (losses[2] * has_pair).sum() / has_pair.sum().clamp(min=1)
        parts = {"global": losses[0].mean(), "intra": losses[1].mean(), "inter": inter}
        weights = dict(zip(LOSS_NAMES, self.settings.orl_loss_weights, strict=True))
        loss = sum(weights[name] * value for name, value in parts.items())
        assert isinstance(loss, torch.Tensor)
        self.collapse.update(embedding)
        self.log("train/loss", loss, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value)
        self.log("train/pair_share", has_pair.mean())
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]
        return loss
