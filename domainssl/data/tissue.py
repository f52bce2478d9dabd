"""Tissue detection on a low-resolution slide image: Otsu on saturation, then clean-up."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_objects

MIN_SATURATION = 0.07
"""Floor of the threshold: on a blank slide Otsu would split glass noise into 'tissue'."""


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] (float32) of an (H, W, 3) uint8 image: (max - min) / max of
    the channels, 0 where max is 0. Max and min are taken channel against channel, in the
    image's own dtype (a reduction over the last axis of 3 is ~15x slower)."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    top = high.astype(np.float32)
    return np.where(high > 0, (top - low) / np.maximum(top, 1), np.float32(0.0))


def close_then_open(mask: np.ndarray) -> np.ndarray:
    """A binary closing with ``disk(2)``, then an opening with ``disk(1)``, pixels outside
    the image counting as background: scipy.ndimage's result, computed by OpenCV (~20x
    faster on a 2048 px thumbnail)."""
    pixels = mask.astype(np.uint8)
    wide, narrow = disk(2).astype(np.uint8), disk(1).astype(np.uint8)
    closed = _erode(_dilate(pixels, wide), wide)
    return _dilate(_erode(closed, narrow), narrow).astype(bool)


def _dilate(pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.dilate(pixels, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0))


def _erode(pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.erode(pixels, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0))


def tissue_mask(rgb: np.ndarray, min_object_fraction: float = 0.001) -> np.ndarray:
    """Boolean tissue mask of a thumbnail (H, W, 3) uint8.

    Stained tissue is saturated; glass is grey-white. Otsu's threshold on saturation (not
    below ``MIN_SATURATION``), a closing and opening with a small disk, filled holes, and
    objects smaller than ``min_object_fraction`` of the image removed.
    """
    sat = saturation(rgb)
    threshold = max(float(threshold_otsu(sat)) if sat.max() > sat.min() else 1.0, MIN_SATURATION)
    mask = sat > threshold
    mask = ndimage.binary_fill_holes(close_then_open(mask))
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
