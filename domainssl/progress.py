"""One progress display for a whole training run (instead of a bar per epoch).

On a terminal the line is redrawn in place; when the output is a file or a pipe (a cluster
job's log) a full line is printed every ``interval`` seconds instead.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Timer

SHOWN_METRICS = {
    "train/loss": "loss {:.3f}",
    "train/embedding_std_ratio": "std ratio {:.2f}",
    "train/rankme": "rankme {:.1f}",
    "monitor/knn_acc": "kNN acc {:.3f}",
}
"""Logged values the line shows once they exist, and how."""


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour)."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunProgress(Callback):
    """Epoch, step / total, ETA, images/s and the watched metrics, on global rank 0.

    Args:
        interval: seconds between lines when the stream is not a terminal.
        stream: where to write (standard error by default, like other progress bars).
    """

    def __init__(self, interval: float = 30.0, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.interval = 0.25 if self.live else interval
        self.width = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        self.started, self.last_shown = now, now - self.interval
        self.first_step = trainer.global_step
        self.images, self.rate_images, self.rate_since = 0, 0, now
        self.images_per_second: float | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if not trainer.is_global_zero:
            return
        images = batch_images(batch) * trainer.world_size
        self.images += images
        self.rate_images += images
        now = time.monotonic()
        if now - self.last_shown >= self.interval:
            self._update_rate(now)
            self.show(self.line(trainer))
            self.last_shown = now

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._update_rate(time.monotonic())
            self.show(self.line(trainer))
            self.finish()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.is_global_zero:
            self.finish()

    def _update_rate(self, now: float) -> None:
        if now > self.rate_since and self.rate_images:
            self.images_per_second = self.rate_images / (now - self.rate_since)
            self.rate_images, self.rate_since = 0, now

    def line(self, trainer: L.Trainer) -> str:
        """The progress line for the trainer's current state."""
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        epoch = (
            trainer.current_epoch + 1 if epochs is None else min(trainer.current_epoch + 1, epochs)
        )
        parts = [f"epoch {epoch}" + (f"/{epochs}" if epochs else "")]
        if math.isfinite(total):
            parts.append(f"step {step}/{int(total)} ({100 * step / max(total, 1):.0f}%)")
        else:
            parts.append(f"step {step}")
        elapsed = time.monotonic() - self.started
        parts.append(f"{format_duration(elapsed)} elapsed")
        eta = self.eta(trainer, elapsed)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        if self.images_per_second:
            parts.append(f"{self.images_per_second:.0f} img/s")
        metrics = trainer.callback_metrics
        parts += [shown.format(float(metrics[key])) for key, shown in SHOWN_METRICS.items()
                  if key in metrics]  # fmt: skip
        return "  ".join(parts)

    def eta(self, trainer: L.Trainer, elapsed: float) -> float | None:
        """Seconds left: the steps left at this session's pace, or the budget left, whichever
        ends first; None before the pace is known."""
        estimates = []
        steps_done, total = (
            trainer.global_step - self.first_step,
            trainer.estimated_stepping_batches,
        )
        if math.isfinite(total) and steps_done > 0:
            estimates.append((total - trainer.global_step) * elapsed / steps_done)
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
        if timer is not None and timer.time_remaining("train") is not None:
            estimates.append(float(timer.time_remaining("train")))  # type: ignore[arg-type]
        return min(estimates) if estimates else None

    def show(self, text: str) -> None:
        if self.live:
            padding = " " * max(self.width - len(text), 0)
            self.stream.write("\r" + text + padding)
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the redrawn line so that what follows starts on its own."""
        if self.live and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def batch_images(batch: Any) -> int:
    """Images in a batch dict (its ``image`` tensor's first dimension), else 0."""
    image = batch.get("image") if isinstance(batch, dict) else None
    return int(image.shape[0]) if isinstance(image, torch.Tensor) else 0
