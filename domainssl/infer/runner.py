"""What GeoTIFF and slide inference share: the network run on batches of tiles, and the
summary of a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, preprocess
from domainssl.infer.allocator import ResidentWatch, keep_freed_memory
from domainssl.infer.models import Task


@dataclass
class InferSummary:
    """What a run did."""

    task: Task
    tiles: int
    tiles_run: int
    """Tiles the model saw: tiles without a single valid input pixel are skipped."""
    seconds: float
    megapixels_per_second: float
    """Input pixels per second over the whole run (reading and writing included)."""
    outputs: list[Path]


PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
"""Inference precisions: float32; float16 autocast (CUDA only: the CPU runs float32);
bfloat16 autocast (CUDA, and CPUs with bfloat16 instructions, where it is about 2x faster
for ResNets and changes features by about 1%: ``bench/results.md``, ``embed-speed``)."""


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``; a user error otherwise."""
    if precision not in PRECISIONS:
        raise DomainSSLError(f"--precision must be {', '.join(PRECISIONS)}, not {precision!r}.")
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype ``precision`` runs convolutions and matrix products in on ``device``;
    None: float32."""
    if precision == "bf16-mixed":
        return torch.bfloat16
    if precision == "16-mixed" and device.type == "cuda":
        return torch.float16
    return None


class TileRunner:
    """Runs the network on the tiles of a batch that hold a valid pixel."""

    def __init__(
        self,
        network: nn.Module,
        meta: BackboneMeta,
        device: torch.device,
        precision: str,
        bar: tqdm,
    ) -> None:
        self.network, self.meta, self.device = network.to(device), meta, device
        if device.type == "cpu":
            keep_freed_memory()  # activations reused, not page-faulted again every batch
        self.precision, self.bar, self.tiles_run = check_precision(precision), bar, 0
        self.memory: ResidentWatch | None = None
        """Set after the first batch, once the heap holds a batch's working memory."""
        self.autocast = autocast_dtype(precision, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor) -> list[np.ndarray | None]:
        """Outputs per tile of raw tiles (B, C, T, T) with validity (B, T, T); None: skipped."""
        ran = valid.flatten(1).any(dim=1)  # (B,)
        results: list[np.ndarray | None] = [None] * len(ran)
        if bool(ran.any()):
            inputs = preprocess(self.meta, images[ran].to(self.device, non_blocking=True))
            with torch.autocast(
                self.device.type, dtype=self.autocast, enabled=self.autocast is not None
            ):
                outputs = self.network(inputs).float().cpu().numpy()  # (b, K[, T, T])
            for slot, output in zip(ran.nonzero()[:, 0].tolist(), outputs, strict=True):
                results[slot] = output
        self.tiles_run += int(ran.sum())
        self.bar.update(len(ran))
        if self.memory is None:
            self.memory = ResidentWatch()
        else:
            self.memory.check()  # a fragmented heap's free pages go back (infer/allocator.py)
        return results
