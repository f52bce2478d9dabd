"""Online kNN monitor: a labeled set scored on the backbone's frozen features while training.

The kNN is transfer's (:class:`~domainssl.models.knn.KNNHead`: cosine, k = 20, votes weighted
by ``exp(similarity / 0.07)``; Wu et al. 2018, as the kNN monitors of DINO, solo-learn and
lightly), and so is the split (seed 0): the memory bank is the set's train + val part, the
queries its test part. The value logged after the last epoch therefore equals
``domainssl transfer <run> --task classify --protocol knn`` on the same set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from domainssl.config import RunConfig
from domainssl.data.datamodule import PretrainDataModule
from domainssl.data.labeled import read_images, read_labeled_index
from domainssl.errors import DomainSSLError
from domainssl.methods.base import SSLMethod
from domainssl.models.knn import KNNHead
from domainssl.views.presets import Standardize
from domainssl.views.stain import PixelStainNormalization


@dataclass
class MonitorSet:
    """Raw pixels of the kept images, their class indices, and which are bank / queries."""

    images: torch.Tensor  # (N, C, S, S)
    targets: torch.Tensor  # (N,)
    classes: list[str]
    bank: np.ndarray
    queries: np.ndarray


def read_monitor_set(path: Path, size: int, in_chans: int, max_samples: int) -> MonitorSet:
    """The labeled set at ``path`` (transfer's layouts and split) with at most ``max_samples``
    images (a seeded share of bank and queries each); clear errors name ``path``."""
    if not path.exists():
        raise DomainSSLError(
            f"Monitor set {path} does not exist: give --monitor a labeled set (class folders "
            "or a path,label CSV) or leave it out."
        )
    try:
        index = read_labeled_index(path)
        if index.targets.ndim != 1:
            raise DomainSSLError("the kNN monitor needs one label per image, not several.")
        if len(index.classes) < 2:
            raise DomainSSLError(
                f"it has one class ({index.classes[0]}): the kNN monitor needs at least 2."
            )
        bank = np.concatenate([index.split.train, index.split.val])
        queries = index.split.test
        if len(bank) + len(queries) > max_samples:
            rng, share = np.random.default_rng(0), max_samples / (len(bank) + len(queries))
            bank, queries = (
                np.sort(rng.choice(part, max(int(len(part) * share), 1), replace=False))
                for part in (bank, queries)
            )
        kept = np.concatenate([bank, queries])
        with torch.random.fork_rng(devices=[]):  # reading draws no number from the run's RNG
            images = read_images([index.files[i] for i in kept], size, in_chans)
    except DomainSSLError as err:
        raise DomainSSLError(f"Monitor set {path} (--monitor): {err}") from None
    order = np.arange(len(kept))
    return MonitorSet(
        images, index.targets[kept], index.classes, order[: len(bank)], order[len(bank) :]
    )


class KnnMonitor(Callback):
    """Logs ``monitor/knn_acc``, the kNN accuracy on a labeled set, every ``every_n_epochs``
    epochs and after the last one (also when a time budget ends the run).

    The set is read once, at fit start, on global rank 0, at the run's sample size and
    normalized as the views normalize (stain normalization, then the method's ``mean`` /
    ``std``). Each evaluation embeds it with ``pl_module.backbone`` in eval mode, fp32, no
    grad, on rank 0 only (the others wait at the next synchronization), then restores each
    module's mode. Cost, bounded by ``max_samples``: that many images in RAM (about
    ``max_samples * bands * size**2 * 4`` bytes) and one forward pass over them per
    evaluation. Strategies that shard the backbone (FSDP, DeepSpeed) are not supported.

    Args:
        path: the labeled set (class folders or a ``path,label`` CSV; see
            :mod:`domainssl.data.labeled`).
        size: side (px) the images are resized to (``data.sample_size``).
        every_n_epochs: evaluate after every this many epochs.
        max_samples: keep at most this many images of the set.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        path: Path,
        size: int,
        every_n_epochs: int = 1,
        max_samples: int = 5000,
        batch_size: int = 256,
    ) -> None:
        if every_n_epochs < 1 or max_samples < 2:
            raise DomainSSLError(
                "trainer.monitor_every_n_epochs must be >= 1 and trainer.monitor_max_samples "
                f">= 2 (got {every_n_epochs} and {max_samples})."
            )
        self.path, self.size, self.every_n_epochs = path, size, every_n_epochs
        self.max_samples, self.batch_size = max_samples, batch_size
        self.data: MonitorSet | None = None
        self.inputs: torch.Tensor | None = None  # (N, C, S, S) normalized, on the CPU

    @classmethod
    def from_config(cls, config: RunConfig) -> KnnMonitor:
        cfg = config.trainer
        assert cfg.monitor is not None, "trainer.monitor names the set"
        path = Path(cfg.monitor).expanduser()
        return cls(
            path, config.data.sample_size, cfg.monitor_every_n_epochs, cfg.monitor_max_samples
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        problem = None
        if trainer.is_global_zero:
            try:
                self.prepare(trainer, _method(pl_module))
            except DomainSSLError as err:
                problem = str(err)
        problem = trainer.strategy.broadcast(problem)  # every process stops on a bad set
        if problem is not None:
            raise DomainSSLError(problem)

    def prepare(self, trainer: L.Trainer, method: SSLMethod) -> None:
        """Read the set and normalize it as the views do."""
        self.data = read_monitor_set(self.path, self.size, len(method.mean), self.max_samples)
        images = self.data.images.float()
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        if isinstance(datamodule, PretrainDataModule) and datamodule.data.stain_norm:
            images = PixelStainNormalization(datamodule.data.stain_norm)(images)
        self.inputs = Standardize(method.mean, method.std)(images)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch, max_epochs = trainer.current_epoch + 1, trainer.max_epochs or -1
        last = trainer.should_stop or 0 < max_epochs <= epoch  # -1: no epoch limit
        if trainer.is_global_zero and (epoch % self.every_n_epochs == 0 or last):
            accuracy = self.accuracy(_method(pl_module).backbone)
            pl_module.log("monitor/knn_acc", accuracy, rank_zero_only=True)

    @torch.no_grad()
    def accuracy(self, backbone: torch.nn.Module) -> float:
        """Share of the queries whose kNN vote (over the bank) is their class."""
        assert self.data is not None and self.inputs is not None, "on_fit_start reads the set"
        features = self.features(backbone)  # (N, D)
        data = self.data
        targets = data.targets.to(features.device)
        head = KNNHead(features[data.bank], targets[data.bank], len(data.classes))
        predicted = head(features[data.queries]).argmax(1)
        return float((predicted == targets[data.queries]).float().mean())

    def features(self, backbone: torch.nn.Module) -> torch.Tensor:
        """Pooled fp32 features (N, D) in eval mode; every module's mode is restored."""
        assert self.inputs is not None
        device = next(backbone.parameters()).device
        modes = [(module, module.training) for module in backbone.modules()]
        backbone.eval()
        try:
            with torch.autocast(device.type, enabled=False):
                chunks = [
                    backbone(self.inputs[i : i + self.batch_size].to(device)).float()
                    for i in range(0, len(self.inputs), self.batch_size)
                ]
        finally:
            for module, mode in modes:
                module.training = mode
        return torch.cat(chunks)


def _method(pl_module: Any) -> SSLMethod:
    if not isinstance(pl_module, SSLMethod):
        raise TypeError(f"KnnMonitor watches an SSLMethod, not {type(pl_module).__name__}")
    return pl_module
