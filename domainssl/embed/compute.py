"""How an archive run computes: tile size, batches, reader processes, device, precision."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Compute:
    """Settings that change speed, not (beyond float rounding) the features."""

    tile: int | None
    """Patch / tile side (px); None: the size the encoder was pretrained on."""
    batch_size: int
    num_workers: int
    """Reader processes per device."""
    device: str
    precision: str
    """32-true, 16-mixed (float16 autocast, CUDA only) or bf16-mixed."""
