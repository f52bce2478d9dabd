"""A 3-band uint8 picture of an embedding map: PCA fitted on a bounded uniform sample of
the embeddings, then applied block by block to the written map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

SAMPLE = 4096
"""Embeddings kept for the PCA fit, whatever the image size."""


class Reservoir:
    """A uniform sample of at most ``capacity`` vectors of a stream (Vitter's algorithm R)."""

    def __init__(self, dim: int, capacity: int = SAMPLE, seed: int = 0) -> None:
        self.sample = np.zeros((capacity, dim), np.float32)  # (capacity, D)
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def add(self, vectors: np.ndarray) -> None:
        """Offer vectors (n, D) to the sample."""
        for vector in vectors:
            slot = self.seen if self.seen < len(self.sample) else self.rng.integers(self.seen + 1)
            if slot < len(self.sample):
                self.sample[slot] = vector
            self.seen += 1

    def vectors(self) -> np.ndarray:
        """The sample (m, D), m = min(capacity, vectors seen)."""
        return self.sample[: min(self.seen, len(self.sample))]


@dataclass(frozen=True)
class PcaStretch:
    """Projection onto the top 3 principal components, stretched so that the 2nd-98th
    percentiles of the sample span 1..255 (0 stays for nodata)."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (3, D)
    low: np.ndarray  # (3,)
    high: np.ndarray  # (3,)

    @classmethod
    def fit(cls, sample: np.ndarray) -> PcaStretch:
        """Fit on a sample (m, D); missing components (m < 3 or rank < 3) are zero."""
        data = sample.astype(np.float64)
        mean = data.mean(axis=0) if len(data) else np.zeros(data.shape[1])
        components = np.zeros((3, data.shape[1]))
        if len(data):
            top = np.linalg.svd(data - mean, full_matrices=False)[2][:3]  # (<=3, D)
            signs = np.sign(top[np.arange(len(top)), np.abs(top).argmax(axis=1)])
            components[: len(top)] = top * signs[:, None]  # largest loading positive
        projected = (data - mean) @ components.T  # (m, 3)
        low, high = np.percentile(projected, [2, 98], axis=0) if len(data) else np.zeros((2, 3))
        return cls(mean, components, low, high)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """uint8 colours (n, 3) in 1..255 of vectors (n, D)."""
        scale = np.where(self.high > self.low, self.high - self.low, 1.0)
        unit = ((vectors - self.mean) @ self.components.T - self.low) / scale  # (n, 3)
        return (1 + np.round(254 * np.clip(unit, 0, 1))).astype(np.uint8)


def write_pca_picture(
    embedding_map: Path, out: Path, stretch: PcaStretch, profile: dict[str, Any]
) -> None:
    """Colour the (D, H, W) float32 map block by block into a 3-band uint8 GeoTIFF
    (NaN cells -> 0, the nodata value)."""
    with rasterio.open(embedding_map) as src, rasterio.open(out, "w", **profile) as dst:
        for _, window in src.block_windows(1):
            block = src.read(window=window)  # (D, h, w)
            vectors = block.reshape(len(block), -1).T  # (h * w, D)
            valid = np.isfinite(vectors).all(axis=1)
            colours = np.zeros((len(vectors), 3), np.uint8)  # (h * w, 3)
            colours[valid] = stretch.apply(vectors[valid])
            dst.write(colours.T.reshape(3, *block.shape[1:]), window=window)
