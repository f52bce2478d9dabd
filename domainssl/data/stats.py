"""Per-band mean and std computed streaming over samples (Chan et al. parallel merge)."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from domainssl.io import atomic_write_text

MIN_STD = 1e-6


@dataclass
class BandStats:
    """Per-band mean/std of the raw pixel values, and what they were computed on."""

    mean: list[float]
    std: list[float]
    count: int
    source: str

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> BandStats:
        return cls(**json.loads(path.read_text()))


class RunningBandStats:
    """Accumulates count, mean and sum of squared deviations per band, in float64."""

    def __init__(self, bands: int) -> None:
        self.count = torch.zeros(bands, dtype=torch.float64)
        self.mean = torch.zeros(bands, dtype=torch.float64)
        self.m2 = torch.zeros(bands, dtype=torch.float64)

    def update(self, images: torch.Tensor) -> None:
        """Add a (B, C, H, W) batch; NaN/inf pixels are ignored."""
        values = images.double().transpose(0, 1).reshape(images.shape[1], -1)  # (C, N)
        finite = torch.isfinite(values)
        n = finite.sum(dim=1).double()
        safe = torch.where(finite, values, 0.0)
        batch_mean = safe.sum(dim=1) / n.clamp(min=1)
        batch_m2 = (torch.where(finite, values - batch_mean[:, None], 0.0) ** 2).sum(dim=1)
        total = self.count + n
        delta = batch_mean - self.mean
        weight = torch.where(total > 0, n / total.clamp(min=1), 0.0)
        self.mean = self.mean + delta * weight
        self.m2 = self.m2 + batch_m2 + delta**2 * self.count * weight
        self.count = total

    def result(self, source: str) -> BandStats:
        """Population std per band; a constant band gets std 1 (and a warning)."""
        std = (self.m2 / self.count.clamp(min=1)).sqrt()
        flat = (std < MIN_STD).nonzero().flatten().tolist()
        if flat:
            warnings.warn(
                f"Bands {flat} of {source} are constant: their std is set to 1.", stacklevel=2
            )
        std = torch.where(std < MIN_STD, 1.0, std)
        return BandStats(self.mean.tolist(), std.tolist(), int(self.count.min()), source)


def compute_band_stats(
    dataset: Dataset, samples: int, source: str, num_workers: int = 0, seed: int = 0
) -> BandStats:
    """Stats over up to ``samples`` samples drawn with a fixed seed."""
    size = len(dataset)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(size, generator=generator)[: min(samples, size)].tolist()
    loader = DataLoader(Subset(dataset, indices), batch_size=64, num_workers=num_workers)
    running: RunningBandStats | None = None
    for batch in loader:
        images = batch["image"]
        running = running or RunningBandStats(images.shape[1])
        running.update(images)
    assert running is not None, "empty dataset"
    return running.result(source)
