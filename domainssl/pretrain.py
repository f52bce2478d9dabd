"""Pretraining: config -> data module + method -> Trainer -> fit -> export."""

from __future__ import annotations

import csv
import os
import shutil
import time
import warnings
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from domainssl.checkpointing import LAST_CHECKPOINT, AtomicCheckpointIO, PeriodicCheckpoint
from domainssl.config import RunConfig, to_yaml
from domainssl.data.datamodule import PretrainData
from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, export_backbone
from domainssl.io import atomic_write, atomic_write_text
from domainssl.methods.registry import method_spec
from domainssl.paths import SKIPPED_INPUTS
from domainssl.runinfo import write_run_info

warnings.filterwarnings(  # by design: views are made on the device by the method's hook
    "ignore", message="You have overridden `on_after_batch_transfer` in `LightningModule`"
)

RUN_DIR_ENV = "DOMAINSSL_RUN_DIR"  # shared with the DDP worker processes Lightning starts
SESSION_LOGS = "logs"


def merge_metrics(run_dir: Path) -> None:
    """Append this session's ``logs/metrics.csv`` to the run's ``metrics.csv`` (kept on resume).

    Lightning's CSV logger starts a fresh file each session; the run keeps the whole history.
    """
    session = run_dir / SESSION_LOGS / "metrics.csv"
    if not session.is_file():
        return
    total = run_dir / "metrics.csv"
    rows = _read_csv(total) + _read_csv(session)
    fields = list(dict.fromkeys(key for row in rows for key in row))

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(total, write)
    session.unlink()


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def new_run_dir(config: RunConfig) -> Path:
    """``<out>/<name>``; the name defaults to ``<domain>-<method>-<timestamp>``.

    Lightning's DDP workers re-run the command; they find the folder in the environment.
    """
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if config.name is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DomainSSLError(
            "Multi-process launches (torchrun, SLURM) need a run name shared by all ranks: "
            "pass --name."
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = config.name or f"{config.domain}-{config.method.name}-{stamp}"
    return Path(config.out) / name


def build_trainer(config: RunConfig, run_dir: Path, progress_bar: bool = True) -> L.Trainer:
    """A Lightning Trainer writing checkpoints and metrics.csv into ``run_dir``."""
    cfg = config.trainer
    max_time = None if cfg.max_time_s is None else timedelta(seconds=cfg.max_time_s)
    callbacks: list[Any] = [
        PeriodicCheckpoint(
            run_dir,
            cfg.checkpoint_every_n_epochs,
            cfg.checkpoint_every_minutes,
            cfg.checkpoint_every_n_steps,
        )
    ]
    if progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,  # type: ignore[arg-type]
        sync_batchnorm=cfg.sync_batchnorm,
        max_epochs=cfg.epochs,
        limit_train_batches=cfg.limit_train_batches,
        max_time=max_time,
        logger=CSVLogger(run_dir, name=SESSION_LOGS, version=""),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,  # PeriodicCheckpoint writes last.ckpt
        default_root_dir=run_dir,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        log_every_n_steps=cfg.log_every_n_steps,
    )


def pretrain(config: RunConfig, resume: Path | None = None, progress_bar: bool = True) -> Path:
    """Train the configured method and export its backbone; returns the run folder.

    A single-stage method is one :func:`fit_and_export`; a multi-stage method's driver
    (from the registry) runs its stages, each trained by :func:`fit_and_export`.

    Args:
        config: the resolved run config.
        resume: a run folder to continue from its ``checkpoints/last.ckpt``.
        progress_bar: show Lightning's progress bar.
    """
    spec = method_spec(config.method.name)
    run_dir = resume if resume is not None else new_run_dir(config)
    fit = partial(fit_and_export, progress_bar=progress_bar)
    inherited = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP workers started by a fit inherit it
    try:
        if spec.stages is None:
            fit(config, run_dir, resume is not None)
        else:
            spec.stages(config, run_dir, resume is not None, fit)
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
    return run_dir


def fit_and_export(
    config: RunConfig, run_dir: Path, resume: bool, progress_bar: bool = True
) -> None:
    """config -> data module + method -> Trainer -> fit -> export, into ``run_dir``."""
    spec = method_spec(config.method.name)
    checkpoint = run_dir / LAST_CHECKPOINT
    if resume and not checkpoint.is_file():
        raise DomainSSLError(f"{run_dir} has no {LAST_CHECKPOINT} to resume from.")
    is_new = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    merge_metrics(run_dir)  # rows of an earlier session that was killed
    atomic_write_text(run_dir / "config.yaml", to_yaml(config))
    write_run_info(run_dir)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    datamodule = spec.data(config, run_dir)
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
    except DomainSSLError:
        if is_new:  # bad data: leave no empty run folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    data = datamodule.data
    method = spec.module(config, data.band_names, data.stats.mean, data.stats.std)
    trainer = build_trainer(config, run_dir, progress_bar)
    trainer.fit(method, datamodule=datamodule, ckpt_path=checkpoint if resume else None)
    trainer.save_checkpoint(checkpoint, weights_only=False)
    if trainer.is_global_zero:
        merge_metrics(run_dir)
        export_backbone(method.backbone, backbone_meta(config, data, method.feature_dim), run_dir)
        if data.skipped:
            atomic_write_text(run_dir / SKIPPED_INPUTS, "\n".join(data.skipped) + "\n")


def backbone_meta(config: RunConfig, data: PretrainData, feature_dim: int) -> BackboneMeta:
    """What the export records: architecture, bands, normalization, resolution, stain."""
    return BackboneMeta(
        timm_name=config.model.backbone,
        small_input=config.model.small_input,
        in_chans=data.in_chans,
        band_names=data.band_names,
        mean=data.stats.mean,
        std=data.stats.std,
        feature_dim=feature_dim,
        input_size=config.data.sample_size,
        method=config.method.name,
        domain=config.domain,
        data_source=data.source,
        config=config.model_dump(mode="json"),
        mpp=data.mpp,
        stain_norm=data.stain_norm,
    )
