"""Seeds as pure functions of their keys (run seed, epoch, rank, draw): what makes every
random draw of a run reproducible and independent of how the work is split."""

from __future__ import annotations

import numpy as np
import torch


def stream_seed(*keys: int) -> int:
    """A 32-bit seed that is a pure function of ``keys`` (e.g. seed, epoch, rank)."""
    return int(np.random.SeedSequence([k % 2**63 for k in keys]).generate_state(1)[0])


def draw_generator(seed: int, key: int) -> torch.Generator:
    """The generator a dataset of random draws uses for draw ``key``."""
    return torch.Generator().manual_seed(stream_seed(seed, key))
