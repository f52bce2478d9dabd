"""Atomic checkpoint writes and a periodic ``last.ckpt`` (every N epochs or minutes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from domainssl.io import atomic_write

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file first and are renamed into place."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


class PeriodicCheckpoint(Callback):
    """Overwrite ``run_dir/checkpoints/last.ckpt`` every ``epochs`` epochs or ``minutes``.

    Args:
        run_dir: the run folder.
        epochs: save after every this many epochs (ignored when ``minutes`` is set).
        minutes: save every this many minutes of training, checked after each batch.
    """

    def __init__(self, run_dir: Path, epochs: int = 1, minutes: float | None = None) -> None:
        self.path = run_dir / LAST_CHECKPOINT
        self.epochs, self.minutes = epochs, minutes
        self.last_save = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.minutes is None:
            return
        due = time.monotonic() - self.last_save >= self.minutes * 60
        if trainer.strategy.broadcast(due):  # rank 0's clock decides for everyone
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None and (trainer.current_epoch + 1) % self.epochs == 0:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self.last_save = time.monotonic()
