"""Class-agnostic object proposals (boxes) for images of any band count.

Three sources, then one filter (minimum side, aspect ratio, area, NMS at IoU 0.5, top-K):

- ``selective_search``: OpenCV's selective search, fast mode (Uijlings et al. 2013), 3 bands.
- ``grouping``: the same hierarchical grouping in NumPy over Felzenszwalb superpixels, for
  N bands: adjacent regions merge greedily by colour + texture histogram, size and fill
  similarity; every region of the hierarchy is a proposal.
- ``nuclei``: H&E only: dark (haematoxylin) connected components and nucleus-rich clusters.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the image, or normalized to [0, 1] by
:func:`propose`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.ndimage import binary_dilation
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops
from skimage.morphology import disk
from skimage.segmentation import felzenszwalb
from torchvision.ops import nms

from domainssl.views.settings import CropViewsConfig

COLOUR_BINS = 25  # selective search: 25 bins per band (Uijlings et al. 2013)
TEXTURE_BINS = 10


@dataclass(frozen=True)
class ProposalSettings:
    """How proposals are made and filtered (from ``views.proposal_*``)."""

    method: Literal["auto", "selective_search", "grouping", "nuclei"] = "auto"
    scale: float = 30.0
    min_side: int = 8
    max_aspect: float = 3.0
    top_k: int = 8
    nms_iou: float = 0.5
    max_area: float = 0.9
    """Boxes covering more than this share of the image are the scene, not an object."""

    @classmethod
    def from_views(cls, views: CropViewsConfig) -> ProposalSettings:
        """Settings from the ``views.proposal_*`` keys."""
        return cls(
            views.proposal_method,
            views.proposal_scale,
            views.proposal_min_side,
            views.proposal_max_aspect,
            views.proposal_top_k,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def filter_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, height: int, width: int, settings: ProposalSettings
) -> torch.Tensor:
    """Drop small, elongated and scene-sized boxes, then NMS and keep the top-K.

    Args:
        boxes: (N, 4) pixel boxes ``x0, y0, x1, y1``.
        scores: (N,) higher is better.
    Returns:
        (K, 4) boxes, best first.
    """
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # (N,)
    aspect = torch.maximum(w / h.clamp(min=1e-6), h / w.clamp(min=1e-6))
    keep = (torch.minimum(w, h) >= settings.min_side) & (aspect <= settings.max_aspect)
    keep &= w * h <= settings.max_area * height * width
    boxes, scores = boxes[keep].float(), scores[keep].float()
    order = nms(boxes, scores, settings.nms_iou)[: settings.top_k]
    return boxes[order]


def selective_search(image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV selective search (fast mode) on an (H, W, 3) uint8 image: boxes and scores."""
    import cv2

    cv2.setNumThreads(1)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV wants BGR
    search.switchToSelectiveSearchFast(int(scale), int(scale), 0.5)
    rects = np.asarray(search.process(), np.float32).reshape(-1, 4)  # (N, 4) x, y, w, h, ranked
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    return boxes, -np.arange(len(boxes), dtype=np.float32)


def _histograms(values: np.ndarray, labels: np.ndarray, regions: int, bins: int) -> np.ndarray:
    """Per-region histograms of (H, W, C) values in [0, 1): (regions, C * bins), L1-normalized."""
    channels = values.shape[-1]
    index = np.minimum((values * bins).astype(np.int64), bins - 1)  # (H, W, C)
    index += np.arange(channels) * bins
    flat = (labels[..., None] * channels * bins + index).ravel()
    hist = np.bincount(flat, minlength=regions * channels * bins).reshape(regions, -1)
    return hist / np.maximum(hist.sum(1, keepdims=True), 1)


def _similarity(r: dict[str, Any], a: int, b: int, image_area: int) -> float:
    """Selective search similarity: colour + texture + size + fill, each in [0, 1]."""
    box = _union(r["box"][a], r["box"][b])
    size = r["size"][a] + r["size"][b]
    fill = ((box[2] - box[0]) * (box[3] - box[1]) - size) / image_area
    colour = np.minimum(r["colour"][a], r["colour"][b]).sum()
    texture = np.minimum(r["texture"][a], r["texture"][b]).sum()
    return float(colour + texture + (1 - size / image_area) + (1 - fill))


def hierarchical_grouping(image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Selective-search grouping over Felzenszwalb superpixels of an (H, W, C) image.

    Bands are stretched to [0, 1] (2-98 %) so ``scale`` means the same for any sensor.
    Returns every region of the hierarchy as a box, scored by hierarchy level times a
    seeded random factor, as Uijlings et al. rank them (larger, later regions first).
    """
    low, high = np.percentile(image, [2, 98], axis=(0, 1))
    unit = np.clip((image - low) / np.maximum(high - low, 1e-6), 0, 0.999)  # (H, W, C)
    with warnings.catch_warnings():  # skimage warns about more than 3 channels; N is fine
        warnings.simplefilter("ignore", RuntimeWarning)
        labels = felzenszwalb(
            unit, scale=scale / 255.0, sigma=0.5, min_size=int(scale), channel_axis=-1
        )
    height, width = labels.shape
    count = int(labels.max()) + 1
    gradient = np.hypot(*np.gradient(unit, axis=(0, 1)))  # (H, W, C)
    ys, xs = np.mgrid[:height, :width]
    flat = labels.ravel()
    boxes = np.stack(
        [_extreme(flat, xs.ravel(), count, np.minimum),
         _extreme(flat, ys.ravel(), count, np.minimum),
         _extreme(flat, xs.ravel(), count, np.maximum) + 1,
         _extreme(flat, ys.ravel(), count, np.maximum) + 1], axis=1,
    ).astype(np.float32)  # fmt: skip
    regions: dict[str, Any] = {
        "box": list(boxes),
        "size": list(np.bincount(flat, minlength=count).astype(np.float64)),
        "colour": list(_histograms(unit, labels, count, COLOUR_BINS)),
        "texture": list(_histograms(np.clip(gradient * 4, 0, 0.999), labels, count, TEXTURE_BINS)),
    }
    pairs = np.concatenate(
        [np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
         np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1)]
    )  # fmt: skip
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1), axis=0)
    area = height * width
    similar = {(int(a), int(b)): _similarity(regions, int(a), int(b), area) for a, b in pairs}
    neighbours: dict[int, set[int]] = {i: set() for i in range(count)}
    for a, b in similar:
        neighbours[a].add(b)
        neighbours[b].add(a)
    while similar:
        a, b = max(similar, key=similar.__getitem__)
        new = len(regions["size"])
        sa, sb = regions["size"][a], regions["size"][b]
        regions["box"].append(_union(regions["box"][a], regions["box"][b]))
        regions["size"].append(sa + sb)
        for key in ("colour", "texture"):
            regions[key].append((regions[key][a] * sa + regions[key][b] * sb) / (sa + sb))
        touching = (neighbours.pop(a) | neighbours.pop(b)) - {a, b}
        for other in touching:
            neighbours[other] -= {a, b}
            neighbours[other].add(new)
            similar.pop((min(a, other), max(a, other)), None)
            similar.pop((min(b, other), max(b, other)), None)
        similar.pop((a, b))
        neighbours[new] = touching
        for other in touching:
            similar[(other, new)] = _similarity(regions, other, new, area)
    level = np.arange(len(regions["size"]), 0, -1, dtype=np.float32)  # last merge = 1
    rank = level * np.random.default_rng(0).random(len(level)).astype(np.float32)
    return np.stack(regions["box"]).astype(np.float32), -rank


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest box holding boxes ``a`` and ``b``."""
    return np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])


def _extreme(labels: np.ndarray, values: np.ndarray, count: int, reduce: Any) -> np.ndarray:
    """Per-label min or max of ``values`` (``reduce`` is np.minimum or np.maximum)."""
    out = np.full(count, values.max() if reduce is np.minimum else values.min())
    reduce.at(out, labels, values)
    return out


def nuclei_components(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H&E (H, W, 3): boxes of dark (haematoxylin) components and of nucleus-rich clusters."""
    gray = image.astype(np.float32).mean(-1)
    if float(gray.max() - gray.min()) < 1e-3:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    dark = gray < threshold_otsu(gray)
    boxes, scores = [], []
    for mask in (dark, binary_dilation(dark, disk(3))):
        for region in regionprops(label(mask)):
            y0, x0, y1, x1 = region.bbox
            boxes.append([x0, y0, x1, y1])
            scores.append(region.area)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


def raw_proposals(image: torch.Tensor, settings: ProposalSettings) -> tuple[np.ndarray, np.ndarray]:
    """Unfiltered (N, 4) pixel boxes and (N,) scores of a (C, H, W) image."""
    pixels = image.float().permute(1, 2, 0).numpy()  # (H, W, C)
    method = settings.method
    if method == "auto":
        method = "selective_search" if pixels.shape[-1] == 3 else "grouping"
    if method in ("selective_search", "nuclei") and pixels.shape[-1] != 3:
        raise ValueError(f"proposal method {method} needs 3 bands, got {pixels.shape[-1]}")
    if method == "grouping":
        return hierarchical_grouping(pixels, settings.scale)
    rgb = pixels.astype(np.uint8) if image.dtype == torch.uint8 else _to_uint8(pixels)
    if method == "nuclei":
        return nuclei_components(rgb)
    return selective_search(rgb, settings.scale)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) values of any range stretched (1-99 %) to uint8."""
    low, high = np.percentile(pixels, [1, 99])
    return (np.clip((pixels - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def propose(image: torch.Tensor, settings: ProposalSettings) -> torch.Tensor:
    """Filtered proposals of a (C, H, W) image as (K, 4) boxes normalized to [0, 1]."""
    height, width = image.shape[-2:]
    boxes, scores = raw_proposals(image, settings)
    kept = filter_boxes(torch.from_numpy(boxes), torch.from_numpy(scores), height, width, settings)
    return kept / torch.tensor([width, height, width, height], dtype=torch.float32)
