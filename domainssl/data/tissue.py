"""Tissue detection on a low-resolution slide image: Otsu on saturation, then clean-up."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_objects

MIN_SATURATION = 0.07
"""Floor of the threshold: on a blank slide Otsu would split glass noise into 'tissue'."""


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an (H, W, 3) uint8 image."""
    values = rgb.astype(np.float32)
    high, low = values.max(axis=2), values.min(axis=2)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0)


def tissue_mask(rgb: np.ndarray, min_object_fraction: float = 0.001) -> np.ndarray:
    """Boolean tissue mask of a thumbnail (H, W, 3) uint8.

    Stained tissue is saturated; glass is grey-white. Otsu's threshold on saturation (not
    below ``MIN_SATURATION``), a closing and opening with a small disk, filled holes, and
    objects smaller than ``min_object_fraction`` of the image removed.
    """
    sat = saturation(rgb)
    threshold = max(float(threshold_otsu(sat)) if sat.max() > sat.min() else 1.0, MIN_SATURATION)
    mask = sat > threshold
    mask = ndimage.binary_opening(ndimage.binary_closing(mask, disk(2)), disk(1))
    mask = ndimage.binary_fill_holes(mask)
    min_size = max(int(min_object_fraction * mask.size), 1)
    return remove_small_objects(mask, max_size=min_size)


def cell_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean of ``mask`` inside each box (x0, y0, x1, y1) in mask pixels, via an integral image."""
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    x0 = np.clip(boxes[:, 0], 0, w)
    y0 = np.clip(boxes[:, 1], 0, h)
    x1 = np.clip(np.maximum(boxes[:, 2], x0 + 1), 0, w)
    y1 = np.clip(np.maximum(boxes[:, 3], y0 + 1), 0, h)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return total / area
