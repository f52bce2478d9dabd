"""Prediction overlays for a person to look at: image | ground truth | prediction."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from domainssl.export import BackboneMeta
from domainssl.io import atomic_write
from domainssl.transfer.segmentation.data import SegmentationSet
from domainssl.transfer.segmentation.training import predict_logits
from domainssl.views.render import display_bands

BASE_COLORS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]],
    dtype=np.uint8,
)
BLEND = 0.5
"""Weight of the class color over the image in the overlays."""


def class_colors(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colors: fixed ones for the first classes (class 0 black), seeded after."""
    extra = np.random.default_rng(0).integers(0, 256, (max(num_classes - len(BASE_COLORS), 0), 3))
    return np.concatenate([BASE_COLORS, extra.astype(np.uint8)])[:num_classes]


def display_rgb(image: np.ndarray, bands: list[int]) -> np.ndarray:
    """(H, W, 3) uint8 from raw bands (C, H, W), each stretched to its 2-98 percentiles."""
    rgb = image[bands].astype(np.float32)  # (3, H, W)
    low = np.percentile(rgb, 2, axis=(1, 2), keepdims=True)
    high = np.percentile(rgb, 98, axis=(1, 2), keepdims=True)
    scaled = np.clip((rgb - low) / np.maximum(high - low, 1e-6), 0, 1)
    return (scaled.transpose(1, 2, 0) * 255).astype(np.uint8)


def blend(rgb: np.ndarray, labels: np.ndarray, colors: np.ndarray, ignore_index: int) -> np.ndarray:
    """Class colors (H, W) over ``rgb`` (H, W, 3); ignored pixels show the image alone."""
    shown = labels != ignore_index  # (H, W)
    colored = colors[np.where(shown, labels, 0)].astype(np.float32)  # (H, W, 3)
    mixed = (1 - BLEND) * rgb + BLEND * colored
    return np.where(shown[..., None], mixed, rgb).astype(np.uint8)


def save_overlays(
    model: nn.Module,
    meta: BackboneMeta,
    images: SegmentationSet,
    out_dir: Path,
    tile: int,
    count: int = 4,
    device: str | torch.device | None = None,
) -> list[Path]:
    """Write ``<stem>_overlay.png`` (image | truth | prediction) for the first ``count`` images."""
    encoding = images.encoding
    colors = class_colors(encoding.num_classes)
    bands = display_bands(meta.band_names)
    written = []
    for index in range(min(count, len(images))):
        sample = images[index]
        logits = predict_logits(model, meta, sample["image"], tile, device=device)  # (K, H, W)
        rgb = display_rgb(sample["image"].numpy(), bands)
        panels = [
            rgb,
            blend(rgb, sample["mask"].numpy(), colors, encoding.ignore_index),
            blend(rgb, logits.argmax(0).numpy(), colors, encoding.ignore_index),
        ]
        path = out_dir / f"{images.pairs[index].image.stem}_overlay.png"
        picture = Image.fromarray(np.concatenate(panels, axis=1))  # (H, 3 W, 3)
        atomic_write(path, partial(picture.save, format="PNG"))
        written.append(path)
    return written
