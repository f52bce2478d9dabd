"""What the console shows: the verbosity of a run and the library messages it leaves out.

Lightning and PyTorch print lines a user of this tool cannot act on (which accelerators
exist, a logging tip, a deprecation inside Lightning, a notice that all batches are used).
Those exact messages are dropped unless ``--verbose``; every other warning still shows.
"""

from __future__ import annotations

import logging
import re
import warnings
from enum import IntEnum


class Verbosity(IntEnum):
    QUIET = 0
    """Warnings, errors and the end-of-run summary only."""
    NORMAL = 1
    """Plus one progress display and the tool's own notes."""
    VERBOSE = 2
    """Plus every library message."""


_level = Verbosity.NORMAL

LIBRARY_NOISE = (
    r"GPU available: ",
    r"TPU available: ",
    r"HPU available: ",
    r"💡 Tip: ",
    r"`Trainer\(\w+=[\d.]+\)` was configured so ",
    r"`Trainer.fit` stopped: `max_epochs=",
    r"Time limit reached\. Elapsed time is ",
    r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES",
    r"Initializing distributed: GLOBAL_RANK",
    r"-{20,}\s*distributed_backend=",
    r"Restoring states from the checkpoint path",
    r"Restored all states from the checkpoint",
)
"""Info lines of Lightning's that say nothing a user acts on (the tool says what matters)."""

WARNING_NOISE = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning's own code
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"The '\w+_dataloader' does not have many workers",  # num_workers is chosen on purpose
)
"""Warnings raised inside libraries about their own internals or our deliberate choices."""


class _DropNoise(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(LIBRARY_NOISE))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage().lstrip()) is None


_FILTER = _DropNoise()
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.distributed",
    "lightning.fabric.utilities.distributed",
    "lightning.pytorch.accelerators.cuda",
)


def set_verbosity(level: Verbosity) -> None:
    """Apply ``level`` for this process: filter the library noise unless verbose."""
    global _level
    _level = level
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        logger.removeFilter(_FILTER)
        if level < Verbosity.VERBOSE:
            logger.addFilter(_FILTER)
        logger.setLevel(logging.WARNING if level == Verbosity.QUIET else logging.NOTSET)
    if level < Verbosity.VERBOSE:
        for message in WARNING_NOISE:
            warnings.filterwarnings("ignore", message=message)


def verbosity() -> Verbosity:
    """The verbosity this process runs with."""
    return _level


def say(message: str) -> None:
    """Print one of the tool's notes unless quiet."""
    if _level >= Verbosity.NORMAL:
        print(message, flush=True)
