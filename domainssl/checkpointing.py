"""Crash-safe checkpoints: atomic writes, weights-only loading, periodic and on-signal saves.

Resuming from a checkpoint written at an epoch end replays the run exactly (with
in-memory data or ``num_workers=0``): :class:`~domainssl.data.samplers.EpochSeededSampler`
makes the shuffle and the random state of every epoch a pure function of ``(seed, epoch)``.
A checkpoint written mid-epoch (step, minute or signal) resumes at its step, but the rest of
that epoch is not replayed batch for batch (Lightning restarts the epoch's loader).
"""

from __future__ import annotations

import pickle
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from domainssl.errors import DomainSSLError
from domainssl.io import atomic_write

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file first and are renamed into place; loads run no code."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """``torch.load(weights_only=True)``: a file carrying pickled code is refused."""
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise DomainSSLError(
                f"{path} holds pickled objects other than tensors and plain values, which "
                "could run code when loaded, so it is refused. Resume only from checkpoints "
                f"this tool wrote; details: {str(error).splitlines()[0]}"
            ) from None


class PeriodicCheckpoint(Callback):
    """Overwrite ``run_dir/checkpoints/last.ckpt`` periodically and when the job is stopped.

    SIGTERM (cluster preemption) and a first Ctrl-C (SIGINT) stop training after the
    current batch, save the checkpoint and exit with code 143 / 130; a second Ctrl-C
    aborts at once.

    Args:
        run_dir: the run folder.
        epochs: save after every this many epochs (ignored when ``minutes`` is set).
        minutes: save every this many minutes of training, checked after each batch.
        steps: also save after every this many optimizer steps.
    """

    def __init__(
        self,
        run_dir: Path,
        epochs: int = 1,
        minutes: float | None = None,
        steps: int | None = None,
    ) -> None:
        if steps is not None and steps < 1:
            raise DomainSSLError(f"trainer.checkpoint_every_n_steps must be >= 1, got {steps}.")
        self.path = run_dir / LAST_CHECKPOINT
        self.epochs, self.minutes, self.steps = epochs, minutes, steps
        self.last_save = time.monotonic()
        self._old_sigint: Any = None
        self._ctrl_c = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.steps is not None and trainer.global_step % self.steps == 0:
            self.save(trainer)
        elif self.minutes is not None:
            due = time.monotonic() - self.last_save >= self.minutes * 60
            if trainer.strategy.broadcast(due):  # rank 0's clock decides for everyone
                self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None and (trainer.current_epoch + 1) % self.epochs == 0:
            self.save(trainer)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Ctrl-C asks for the same graceful stop as SIGTERM (Lightning's flag)."""

        def stop(signum: int, frame: FrameType | None) -> None:
            if trainer.received_sigterm:
                raise KeyboardInterrupt
            print("Stopping after this batch and saving a checkpoint (Ctrl-C again aborts).")
            trainer._signal_connector.received_sigterm = True  # Lightning's stop flag
            self._ctrl_c = True

        try:
            self._old_sigint = signal.signal(signal.SIGINT, stop)
        except ValueError:  # not the main thread: leave signals alone
            self._old_sigint = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()
        if isinstance(exception, SIGTERMException):
            self.save(trainer)
            exception.code = 130 if self._ctrl_c else 143  # shell convention: 128 + signal
            if trainer.is_global_zero:
                print(
                    f"Stopped at step {trainer.global_step}; saved {self.path}. "
                    f"Continue with: domainssl pretrain --resume {self.path.parent.parent}"
                )

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # full state
        self.last_save = time.monotonic()

    def _restore_sigint(self) -> None:
        if self._old_sigint is not None:
            signal.signal(signal.SIGINT, self._old_sigint)
            self._old_sigint = None
