"""Object-aware crops (Mishra et al. 2022) and box jitter (ORL, Xie et al. 2021).

Boxes are ``(x0, y0, x1, y1)`` normalized to [0, 1]. Crops are affine matrices (B, 2, 3)
from output to input grid coordinates ([-1, 1]), as in :mod:`domainssl.views.crops`, so a
box crop and a random resized crop inside it compose into one resampling.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from domainssl.views.crops import random_crop_affine
from domainssl.views.settings import CropViewsConfig


def box_affine(boxes: torch.Tensor) -> torch.Tensor:
    """(B, 4) boxes -> (B, 2, 3) affines mapping the output grid onto each box."""
    theta = torch.zeros(len(boxes), 2, 3, device=boxes.device)
    theta[:, 0, 0] = boxes[:, 2] - boxes[:, 0]  # half-width in [-1, 1] units
    theta[:, 1, 1] = boxes[:, 3] - boxes[:, 1]
    theta[:, 0, 2] = boxes[:, 0] + boxes[:, 2] - 1  # centre in [-1, 1] units
    theta[:, 1, 2] = boxes[:, 1] + boxes[:, 3] - 1
    return theta


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``outer`` after ``inner``: x -> outer(inner(x)), both (B, 2, 3)."""
    linear = outer[:, :, :2] @ inner[:, :, :2]  # (B, 2, 2)
    shift = (outer[:, :, :2] @ inner[:, :, 2:]).squeeze(-1) + outer[:, :, 2]  # (B, 2)
    return torch.cat([linear, shift[..., None]], dim=2)


def resize_boxes(boxes: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """Boxes with new (B, 2) sides (w, h) about the same centres, shifted to lie in [0, 1]."""
    sides = sides.clamp(max=1.0)
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2).clamp(sides / 2, 1 - sides / 2)  # (B, 2)
    return torch.cat([centre - sides / 2, centre + sides / 2], dim=1)


def pad_boxes(boxes: torch.Tensor, min_side: float) -> torch.Tensor:
    """Widen box sides below ``min_side`` (a share of the image) to it."""
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=min_side)  # (B, 2)
    return resize_boxes(boxes, sides)


def dilate_boxes(boxes: torch.Tensor, factor: tuple[float, float]) -> torch.Tensor:
    """Scale each box's sides by one factor ~ U(factor), inside the image."""
    scale = torch.empty(len(boxes), 1, device=boxes.device).uniform_(*factor)
    return resize_boxes(boxes, (boxes[:, 2:] - boxes[:, :2]) * scale)


def jitter_boxes(
    boxes: torch.Tensor, min_iou: float, strength: float = 0.3, tries: int = 10
) -> torch.Tensor:
    """Random shifts and rescalings of (B, 4) boxes, each with IoU >= ``min_iou`` to its box.

    Centre shifts ~ U(±s) of the side and side factors ~ U(1 ± s) are drawn up to
    ``tries`` times, s shrinking from ``strength`` by 0.7 a try; a box whose draws all fall
    below ``min_iou`` stays unchanged.
    """
    result = boxes.clone()
    pending = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    sides = boxes[:, 2:] - boxes[:, :2]  # (B, 2)
    for attempt in range(tries):
        s = strength * 0.7**attempt
        shift = (torch.rand_like(sides) * 2 - 1) * s * sides
        new_sides = sides * (1 + (torch.rand_like(sides) * 2 - 1) * s)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + shift
        candidate = torch.cat([centre - new_sides / 2, centre + new_sides / 2], 1).clamp(0, 1)
        iou = box_iou(candidate, boxes).diagonal()
        accept = pending & (iou >= min_iou)
        result[accept] = candidate[accept]
        pending &= ~accept
    return result


def crop_affine(
    boxes: torch.Tensor, scale: tuple[float, float], config: CropViewsConfig
) -> torch.Tensor:
    """A random resized crop of area share ~ U(scale) inside each box, flips and rot90."""
    inner = random_crop_affine(
        len(boxes), scale, config.crop_ratio, config.flip_p, config.rot90, boxes.device
    )
    return compose(box_affine(boxes), inner)


def object_crop_pair(
    boxes: torch.Tensor, config: CropViewsConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affines of two views per image around its proposal ``boxes`` (B, 4).

    ``object_aware``: one view is a crop of area share (s, 1) inside the (padded) box, the
    other a standard random resized crop of the box dilated by ``box_dilation``;
    ``scene_object``: the other is a standard crop of the whole image. Order swapped at random.
    """
    boxes = pad_boxes(boxes.float(), config.min_box_fraction)
    first = crop_affine(boxes, config.object_scale, config)
    if config.crops == "object_aware":
        context = dilate_boxes(boxes, config.box_dilation)
    else:
        context = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=boxes.device).expand_as(boxes)
    second = crop_affine(context, config.crop_scale, config)
    swap = (torch.rand(len(boxes), device=boxes.device) < 0.5).view(-1, 1, 1)
    return torch.where(swap, second, first), torch.where(swap, first, second)


def draw_boxes(images: torch.Tensor, boxes: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Copies of (B, C, H, W) images with each (B, 4) box outlined at the images' maximum."""
    out = images.clone()
    height, size = images.shape[-2:]
    scale = torch.tensor([size, height, size, height]) - 1
    corners = (boxes.float().cpu() * scale).round().long()  # (B, 4) pixel x0, y0, x1, y1
    peak = images.amax()
    for image, (x0, y0, x1, y1) in zip(out, corners.tolist(), strict=True):
        image[:, y0 : y1 + 1, x0 : x0 + width] = peak
        image[:, y0 : y1 + 1, x1 - width + 1 : x1 + 1] = peak
        image[:, y0 : y0 + width, x0 : x1 + 1] = peak
        image[:, y1 - width + 1 : y1 + 1, x0 : x1 + 1] = peak
    return out
