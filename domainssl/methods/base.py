"""Shared base of all SSL methods: normalization, views, schedule, EMA, collapse signals."""

from __future__ import annotations

import hashlib
import math
import warnings
from abc import abstractmethod
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from domainssl.config import MethodConfig, RunConfig
from domainssl.io import atomic_write_text
from domainssl.methods.optim import build_optimizer, warmup_cosine
from domainssl.models.backbones import apply_init, create_backbone
from domainssl.models.init_weights import init_normalization, resolve_init
from domainssl.views.presets import ViewPipeline, build_views, view_pair


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online``; buffers are copied."""
    target_params = [p.data for p in target.parameters()]
    online_params = [p.data for p in online.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1 - momentum)
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers(), strict=True):
        target_buffer.copy_(online_buffer)


def replica_fingerprint(module: nn.Module) -> str:
    """SHA-256 of all parameters (EMA targets included) and non-BatchNorm buffers (queues).

    BatchNorm running statistics are left out: each process updates them from its own batch.
    """
    digest = hashlib.sha256()
    tensors = list(module.named_parameters()) + [
        (name, buffer)
        for name, buffer in module.named_buffers()
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


REPLICA_MISMATCH = "REPLICAS_DIFFER.txt"
"""Written into the run folder when the processes of a run ended with different weights."""


def rankme(embedding: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank of an embedding matrix (N, D) (RankMe, Garrido et al. 2023).

    ``exp`` of the entropy of ``p_k = sigma_k / sum(sigma) + eps`` over its singular values
    ``sigma``: scale-free, about 1 for a collapsed (rank-1) embedding and at most
    ``min(N, D)`` (plus a hair from ``eps``, the paper's 1e-7), so compare runs at equal N.
    NaN when the embedding is not finite.
    """
    if not bool(embedding.isfinite().all()):
        return math.nan
    sigma = torch.linalg.svdvals(embedding.float())  # (min(N, D),)
    p = sigma / sigma.sum().clamp(min=torch.finfo(sigma.dtype).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


class CollapseMonitor:
    """Collapse signals over an epoch: per-dimension std of L2-normalized embeddings, and the
    effective rank (:func:`rankme`) of the epoch's last ``rank_rows`` embeddings.

    Healthy embeddings spread over the sphere have std about 1/sqrt(dim) per dimension
    (Jing et al. 2022; lightly's ``std_of_l2_normalized``); collapse drives it to 0. The rows
    for the rank stay on the embeddings' device, in fp32 (at most ``rank_rows`` + one batch).
    """

    def __init__(self, rank_rows: int = 2048) -> None:
        self.rank_rows = rank_rows
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None
        self.recent: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, embedding: torch.Tensor) -> None:
        rows = embedding.detach().float()  # (B, D)
        z = nn.functional.normalize(rows, dim=1)
        self.total = z.sum(0) if self.total is None else self.total + z.sum(0)
        squared = (z**2).sum(0)
        self.total_sq = squared if self.total_sq is None else self.total_sq + squared
        self.count += len(z)
        self.recent.append(rows)
        while sum(len(r) for r in self.recent[1:]) >= self.rank_rows:
            self.recent.pop(0)

    def std(self) -> tuple[float, float]:
        """(mean per-dimension std, that std times sqrt(dim): 1 is healthy, 0 collapsed)."""
        assert self.total is not None and self.total_sq is not None and self.count > 1
        mean = self.total / self.count
        variance = (self.total_sq / self.count - mean**2).clamp(min=0)
        std = float(variance.sqrt().mean())
        return std, std * math.sqrt(len(mean))

    def rank(self) -> float:
        """RankMe of the last ``rank_rows`` embeddings: at most min(rows, dim)."""
        return rankme(torch.cat(self.recent)[-self.rank_rows :])


class ProjectionConfig(MethodConfig):
    """Keys of the methods with a projection MLP on the backbone."""

    proj_hidden_dim: int = 1024
    proj_dim: int = 128


SettingsT = TypeVar("SettingsT", bound=MethodConfig)


class SSLMethod(L.LightningModule, Generic[SettingsT]):
    """Backbone + normalization + views + schedule; subclasses add heads and a loss.

    The networks need the data's bands and statistics. Under a Trainer they are built in
    :meth:`configure_model`, after the data module is prepared (once) and set up (on every
    process); given ``band_names``, ``mean`` and ``std`` here, they are built at once.

    Args:
        config: the run config; ``config.method`` is the method's own section, kept as
            :attr:`settings`.
        band_names: names of the input bands, in order.
        mean: per-band mean of the raw pixel values.
        std: per-band std of the raw pixel values.
    """

    def __init__(
        self,
        config: RunConfig,
        band_names: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config.model_dump(mode="json")}, logger=False)
        self.config = config
        self.settings = cast(SettingsT, config.method)  # the registry pairs module and section
        self.collapse = CollapseMonitor()
        self.progress = 0.0
        self.built = False
        if band_names is not None and mean is not None and std is not None:
            self.build(band_names, mean, std)

    def configure_model(self) -> None:
        """Build the networks from the set-up data module (once; resuming loads into them)."""
        if not self.built:
            data = self.trainer.datamodule.data  # type: ignore[attr-defined]
            self.build(data.band_names, data.stats.mean, data.stats.std)

    def build(self, band_names: list[str], mean: list[float], std: list[float]) -> None:
        """Backbone (``in_chans`` = band count, started from ``model.init``), views, heads."""
        cfg = self.config.model
        self.backbone = create_backbone(
            cfg.backbone, len(band_names), cfg.small_input, cfg.timm_kwargs
        )
        self.init_record: dict[str, Any] | None = None
        if cfg.init is not None:
            init = resolve_init(cfg.init)
            self.init_record = apply_init(self.backbone, init, band_names, cfg.adapt_in_chans)
            mean, std = init_normalization(init, band_names, mean, std, cfg.init_normalization)
            self.init_record["normalization"] = cfg.init_normalization
        self.mean, self.std = mean, std
        """The per-band normalization the views (and so the export) use."""
        self.feature_dim: int = self.backbone.num_features  # type: ignore[assignment]
        self.views: ViewPipeline = build_views(self.config.views, mean, std)
        self.build_heads()
        self.built = True

    @abstractmethod
    def build_heads(self) -> None:
        """Create the method's heads, targets and loss (backbone and views exist)."""

    @abstractmethod
    def loss_and_embedding(
        self, view0: torch.Tensor, view1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The method's loss on two views, and the embedding watched for collapse."""

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Make two standardized views, on the batch's device (GPU when there is one);
        object-aware crops use the samples' proposal ``box`` when the loader gives one."""
        with torch.no_grad():
            images = batch["image"].float()
            batch["views"] = view_pair(self.views, images, batch.get("box"))
        return batch

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, embedding = self.loss_and_embedding(*batch["views"])
        self.collapse.update(embedding)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Set the learning rate from the run's progress (steps or time budget)."""
        self.progress = self._run_progress()
        optimizer, continued = self.config.optimizer, self.config.model.init is not None
        factor = warmup_cosine(self.progress, optimizer.warmup(continued))
        for group in self.optimizers().param_groups:  # type: ignore[union-attr]
            group["lr"] = optimizer.peak_lr(continued) * factor * group.get("lr_scale", 1.0)

    def _run_progress(self) -> float:
        """max(step share, time share): the schedule ends with whichever budget ends first."""
        trainer = self.trainer
        total_steps = trainer.estimated_stepping_batches
        step_share = trainer.global_step / total_steps if math.isfinite(total_steps) else 0.0
        max_time = self.config.trainer.max_time_s
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
        time_share = 0.0
        if max_time and timer is not None:
            elapsed = timer.time_elapsed("train")
            time_share = float(trainer.strategy.broadcast(elapsed)) / max_time  # rank 0's clock
        return min(max(step_share, time_share), 1.0)

    def on_train_epoch_end(self) -> None:
        if self.collapse.count < 2:
            return
        std, ratio = self.collapse.std()
        self.log("train/embedding_std", std, sync_dist=True)
        self.log("train/embedding_std_ratio", ratio, prog_bar=True, sync_dist=True)
        self.log("train/rankme", self.collapse.rank(), prog_bar=True, sync_dist=True)
        if ratio < self.config.trainer.collapse_threshold:
            warnings.warn(
                f"COLLAPSE WARNING (epoch {self.current_epoch}): embedding std {std:.4f} is "
                f"{ratio:.2f}x the healthy 1/sqrt(dim); the representation is collapsing. "
                "Lower the learning rate, use stronger views, or switch method.",
                stacklevel=1,
            )
        self.collapse.reset()

    def on_train_end(self) -> None:
        """In multi-process runs, check that every replica holds the same weights and queues.

        A mismatch never discards the run: rank 0's weights are still exported, with a loud
        warning and :data:`REPLICA_MISMATCH` in the run folder naming each rank's fingerprint.
        """
        if self.trainer.world_size == 1:
            return
        prints: list[str | None] = [None] * self.trainer.world_size
        dist.all_gather_object(prints, replica_fingerprint(self))
        if len(set(prints)) == 1:
            rank_zero_info(f"Replica check: weights identical on {len(prints)} processes.")
            return
        report = "\n".join(f"rank {rank}: {digest}" for rank, digest in enumerate(prints))
        warnings.warn(
            f"REPLICA MISMATCH: the {len(prints)} processes ended with different weights; the "
            f"export holds rank 0's. Fingerprints:\n{report}",
            stacklevel=1,
        )
        if self.trainer.is_global_zero:
            marker = Path(self.trainer.default_root_dir) / REPLICA_MISMATCH
            atomic_write_text(marker, f"Model replicas diverged; exported rank 0's.\n{report}\n")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self, self.config.optimizer)
