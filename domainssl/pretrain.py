"""Pretraining: config -> data module + method -> Trainer -> fit -> export."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.exceptions import SIGTERMException

from domainssl.checkpointing import LAST_CHECKPOINT, AtomicCheckpointIO, PeriodicCheckpoint
from domainssl.config import RunConfig, TrainerConfig, to_yaml
from domainssl.console import say, set_verbosity, verbosity
from domainssl.data.datamodule import PretrainData
from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, export_backbone
from domainssl.io import atomic_write, atomic_write_text
from domainssl.methods.base import SSLMethod
from domainssl.methods.knn_monitor import KnnMonitor
from domainssl.methods.registry import method_spec
from domainssl.models.backbones import vit_kwargs
from domainssl.models.init_weights import init_architecture
from domainssl.paths import SKIPPED_INPUTS
from domainssl.progress import RunProgress
from domainssl.run_report import record_session, stop_reason, write_run_report
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


def launch_rank() -> int:
    """This process's global rank as its launcher set it (torchrun, SLURM, or Lightning's
    own launch of the other devices), before any process group exists; 0 alone."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if variable in os.environ and launch_size() > 1:
            return int(os.environ[variable])
    return 0


def launch_size() -> int:
    """Processes the launcher started: torchrun's ``WORLD_SIZE``, SLURM's tasks of the
    job step (``SLURM_NTASKS``), else 1."""
    return max(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("SLURM_NTASKS", "1")))


def new_run_dir(config: RunConfig) -> Path:
    """``<out>/<name>``; the name defaults to ``<domain>-<method>-<timestamp>``.

    Lightning's DDP workers re-run the command; they find the folder in the environment.
    Processes started by another launcher (torchrun, a SLURM job step with several tasks)
    cannot agree on a timestamp, so they need ``--name``.
    """
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if config.name is None and launch_size() > 1:
        raise DomainSSLError(
            f"This is one of {launch_size()} processes (torchrun or a SLURM job step with "
            "several tasks), which need a run name shared by all of them: pass --name."
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = config.name or f"{config.domain}-{config.method.name}-{stamp}"
    return Path(config.out) / name


class BudgetTimer(Timer):
    """Lightning's ``max_time`` Timer, also counting the time the data module spent
    preparing in this session (band statistics, proposals, ORL's stage-2 mining)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        spent = getattr(trainer.datamodule, "preparation_seconds", 0.0)  # type: ignore[attr-defined]
        self._start_time[RunningStage.TRAINING] = time.monotonic() - spent


def training_strategy(cfg: TrainerConfig) -> str | Strategy:
    """DDP without broadcasting buffers every step when several processes train (the MoCo
    queue and EMA targets are identical by construction; BatchNorm statistics stay per
    process unless ``trainer.sync_batchnorm``), else the configured strategy."""
    devices = cfg.devices
    count = len(devices.split(",")) if isinstance(devices, str) and "," in devices else devices
    several = cfg.num_nodes > 1 or (isinstance(count, int) and count > 1)
    if cfg.strategy == "ddp" or (cfg.strategy == "auto" and several):
        return DDPStrategy(forward_sync_buffers=False)  # buffers still synced once, at start
    return cfg.strategy


def check_device_and_precision(cfg: TrainerConfig) -> None:
    """A GPU asked for where there is none, or float16 on the CPU, is a clear error."""
    cuda = torch.cuda.is_available()
    if cfg.accelerator in ("gpu", "cuda") and not cuda:
        raise DomainSSLError(
            f"--accelerator {cfg.accelerator} but no CUDA GPU is visible: use cpu or auto."
        )
    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not cuda)
    if on_cpu and cfg.precision in ("16-mixed", "16", "16-true"):
        raise DomainSSLError(
            f"--precision {cfg.precision} needs a CUDA GPU (float16 autocast and gradient "
            "scaling); on the CPU use bf16-mixed or 32-true."
        )


def build_trainer(config: RunConfig, run_dir: Path, progress_bar: bool = True) -> L.Trainer:
    """A Lightning Trainer writing checkpoints, metrics.csv and the configured loggers into
    ``run_dir``; samplers are ours (rank-aware), not Lightning's distributed replacement."""
    cfg = config.trainer
    callbacks: list[Any] = [
        PeriodicCheckpoint(
            run_dir,
            cfg.checkpoint_every_n_epochs,
            cfg.checkpoint_every_minutes,
            cfg.checkpoint_every_n_steps,
        ),
        LogShortEpochs(),
    ]
    budget = None if cfg.max_time_s is None else timedelta(seconds=cfg.max_time_s)
    callbacks.append(BudgetTimer(budget, verbose=False))  # also times runs without a budget
    if cfg.monitor is not None:
        callbacks.append(KnnMonitor.from_config(config))
    if progress_bar:
        callbacks.append(RunProgress(cfg.progress_every_s))
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=training_strategy(cfg),
        precision=cfg.precision,  # type: ignore[arg-type]
        sync_batchnorm=cfg.sync_batchnorm,
        max_epochs=-1 if cfg.epochs is None else cfg.epochs,  # -1: until the budget is spent
        limit_train_batches=cfg.limit_train_batches,
        use_distributed_sampler=False,
        logger=build_loggers(cfg.loggers, run_dir),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,  # PeriodicCheckpoint writes last.ckpt
        default_root_dir=run_dir,
        enable_model_summary=False,
        enable_progress_bar=False,  # RunProgress: one display for the whole run
        log_every_n_steps=cfg.log_every_n_steps,
    )


class LogShortEpochs(Callback):
    """With fewer batches per epoch than ``log_every_n_steps``, log every step, so that a
    short run still has its loss and learning-rate curves."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches, every = trainer.num_training_batches, trainer.log_every_n_steps  # type: ignore[attr-defined]
        if isinstance(batches, int) and batches < every:
            trainer.log_every_n_steps = 1  # type: ignore[attr-defined]


LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def require_logger_packages(names: Sequence[str]) -> None:
    """A logger whose package is not installed is a clear error before anything runs."""
    for name in names:
        package = LOGGER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise DomainSSLError(
                f"--logger {name} needs the {package} package, which is not installed: "
                f"pip install {package} (or leave {name} out of --logger)."
            )


def build_loggers(names: Sequence[str], run_dir: Path) -> list[Logger]:
    """``metrics.csv`` (always; merged over sessions) plus the named loggers: TensorBoard
    events in ``run_dir/tensorboard``, Weights & Biases or MLflow (their packages needed)."""
    require_logger_packages(names)
    loggers: list[Logger] = [CSVLogger(run_dir, name=SESSION_LOGS, version="")]
    for name in names:
        if name == "tensorboard":
            loggers.append(
                TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)
            )
        elif name == "wandb":
            loggers.append(WandbLogger(name=run_dir.name, save_dir=run_dir, project="domainssl"))
        else:
            uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
            loggers.append(MLFlowLogger("domainssl", run_name=run_dir.name, tracking_uri=uri))
    return loggers


def pretrain(config: RunConfig, resume: Path | None = None, progress_bar: bool = True) -> Path:
    """Train the configured method and export its backbone; returns the run folder.

    A single-stage method is one :func:`fit_and_export`; a multi-stage method's driver
    (from the registry) runs its stages, each trained by :func:`fit_and_export`.

    Args:
        config: the resolved run config.
        resume: a run folder to continue from its ``checkpoints/last.ckpt``.
        progress_bar: show the run's progress display.
    """
    spec = method_spec(config.method.name)
    set_verbosity(verbosity())  # the library noise filtered for API callers too
    check_device_and_precision(config.trainer)
    require_logger_packages(config.trainer.loggers)
    config = resolved_model(config)
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
    """config -> data module + method -> Trainer -> fit -> export, into ``run_dir``.

    Inside ``fit``, the data module prepares its caches once (global rank 0) while the
    other processes wait, every process sets the data up, and the method builds its
    networks from the data's bands and statistics. Only rank 0 writes the run folder.
    """
    spec = method_spec(config.method.name)
    checkpoint = run_dir / LAST_CHECKPOINT
    if resume and not checkpoint.is_file():
        raise DomainSSLError(f"{run_dir} has no {LAST_CHECKPOINT} to resume from.")
    is_new = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    if launch_rank() == 0:
        merge_metrics(run_dir)  # rows of an earlier session that was killed
        atomic_write_text(run_dir / "config.yaml", to_yaml(config))
        write_run_info(run_dir)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    datamodule = spec.data(config, run_dir)
    method = spec.module(config)
    trainer = build_trainer(config, run_dir, progress_bar)
    images_per_step = config.data.batch_size * trainer.world_size
    try:
        trainer.fit(method, datamodule=datamodule, ckpt_path=checkpoint if resume else None)
    except DomainSSLError:
        if is_new and trainer.is_global_zero:  # bad data: leave no empty run folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    except SIGTERMException:  # checkpointed by PeriodicCheckpoint; say how far it got
        if trainer.is_global_zero:
            merge_metrics(run_dir)
            record_session(run_dir, trainer, images_per_step, "signal")
            write_run_report(run_dir)
        raise
    trainer.save_checkpoint(checkpoint, weights_only=False)
    if trainer.is_global_zero:
        merge_metrics(run_dir)
        data = datamodule.data
        export_backbone(method.backbone, backbone_meta(config, data, method), run_dir)
        if data.skipped:
            atomic_write_text(run_dir / SKIPPED_INPUTS, "\n".join(data.skipped) + "\n")
        record_session(run_dir, trainer, images_per_step, stop_reason(trainer))
        write_run_report(run_dir)


def backbone_meta(config: RunConfig, data: PretrainData, method: SSLMethod) -> BackboneMeta:
    """What the export records: architecture, bands, normalization, resolution, stain, and
    the weights pretraining started from."""
    return BackboneMeta(
        timm_name=config.model.backbone,
        small_input=config.model.small_input,
        in_chans=data.in_chans,
        band_names=data.band_names,
        mean=method.mean,
        std=method.std,
        feature_dim=method.feature_dim,
        input_size=config.data.sample_size,
        method=config.method.name,
        domain=config.domain,
        data_source=data.source,
        config=config.model_dump(mode="json"),
        mpp=data.mpp,
        stain_norm=data.stain_norm,
        timm_kwargs=config.model.timm_kwargs,
        init=method.init_record,
    )


def resolved_model(config: RunConfig) -> RunConfig:
    """``config`` with ``model.backbone`` set to the architecture ``model.init`` names (a run
    folder's, a timm or torchgeo weight's; said when it differs), and a ViT's ``img_size``,
    ``patch_size`` and ``dynamic_img_size`` filled in for the views' crop size."""
    model = config.model
    spec = model.init
    architecture = init_architecture(spec) if spec is not None else None
    if architecture is not None and architecture != model.backbone:
        say(f"model.backbone: {architecture}, the architecture of --init {spec}")
        model = model.model_copy(update={"backbone": architecture})
    crop = getattr(config.views, "crop_size", config.data.sample_size)
    kwargs = vit_kwargs(model.backbone, crop, model.timm_kwargs)
    return config.model_copy(update={"model": model.model_copy(update={"timm_kwargs": kwargs})})
