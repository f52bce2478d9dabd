"""`domainssl pretrain`: options -> run config -> pretraining -> a summary of the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from domainssl.commands.common import (
    ConfigFile,
    Data,
    Domain,
    Method,
    Quiet,
    Sets,
    Verbose,
    apply_verbosity,
    parse_devices,
    user_errors,
)
from domainssl.config import (
    RunConfig,
    build_config,
    load_config,
    parse_set,
    read_yaml,
    set_dotted,
    without_foreign_keys,
)
from domainssl.console import Verbosity
from domainssl.errors import DomainSSLError
from domainssl.paths import SKIPPED_INPUTS

RUN_FILES = {
    "config.yaml": "resolved run config",
    "environment.json": "package versions and git commit",
    "band_stats.json": "per-band mean/std used for normalization",
    "report.md": "READ FIRST: what ran, why it stopped, curves, next commands",
    "curves.png": "loss, learning rate, collapse signals, kNN monitor over steps",
    "metrics.csv": "loss, learning rate and embedding std per step/epoch",
    "tensorboard": "TensorBoard events (tensorboard --logdir <out>)",
    "checkpoints/last.ckpt": "full training state (for --resume)",
    "backbone.safetensors": "pretrained backbone weights",
    "backbone.json": "backbone metadata: timm name, bands, mean/std, method",
    SKIPPED_INPUTS: "UNREADABLE INPUTS LEFT OUT of this run (one per line)",
}


@user_errors
def pretrain(
    domain: Domain = "eo",
    method: Method = None,
    config: ConfigFile = None,
    data: Data = None,
    mpp: Annotated[
        float | None, typer.Option(help="Pathology: patch resolution in µm/px (0.5 ~ 20x).")
    ] = None,
    magnification: Annotated[
        float | None,
        typer.Option(help="Pathology: objective magnification instead of --mpp (20 = 0.5 µm/px)."),
    ] = None,
    backbone: Annotated[str | None, typer.Option(help="timm model name.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per device.")] = None,
    max_time: Annotated[
        str | None, typer.Option(help="Wall-clock budget HH:MM:SS; the LR schedule spans it.")
    ] = None,
    devices: Annotated[str | None, typer.Option(help="Devices: 1, 4, auto or 0,1.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes (torchrun / SLURM).")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu or auto.")] = None,
    precision: Annotated[str | None, typer.Option(help="32-true, bf16-mixed, 16-mixed.")] = None,
    out: Annotated[str | None, typer.Option(help="Parent folder of run folders.")] = None,
    name: Annotated[str | None, typer.Option(help="Run folder name.")] = None,
    set_: Sets = None,
    resume: Annotated[
        Path | None, typer.Option(help="Run folder to continue from its last checkpoint.")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Start from these weights: a run or transfer folder, a weight file, a timm "
            "name (resnet50.a1_in1k), hf-hub:org/name or torchgeo:<Weights>.<MEMBER> "
            "(ORL: a finished run is its stage 1)."
        ),
    ] = None,
    monitor: Annotated[
        str | None,
        typer.Option(
            help="Labeled set (class folders or path,label CSV) scored by a kNN on the frozen "
            "features every trainer.monitor_every_n_epochs epochs: monitor/knn_acc."
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first unreadable chip instead of skipping it.")
    ] = False,
    logger: Annotated[
        str | None,
        typer.Option(
            help="Loggers besides metrics.csv: tensorboard (default), wandb, mlflow, "
            "comma-separated, or none."
        ),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Pretrain an encoder with self-supervised learning and export its backbone."""
    level = apply_verbosity(quiet, verbose)
    from domainssl.pretrain import pretrain as run_pretraining  # registers the methods

    if magnification is not None:
        mpp = mpp_of_magnification(magnification, mpp)
    overrides = {
        "data.path": data,
        "data.mpp": mpp,
        "model.backbone": backbone,
        "trainer.epochs": epochs,
        "data.batch_size": batch_size,
        "trainer.max_time": max_time,
        "trainer.devices": parse_devices(devices),
        "trainer.num_nodes": num_nodes,
        "trainer.accelerator": accelerator,
        "trainer.precision": precision,
        "out": out,
        "name": name,
        "model.init": init,
        "trainer.monitor": monitor,
        "data.strict": True if strict else None,
        "trainer.loggers": parse_loggers(logger),
    }
    if resume is not None:
        run_config = resumed_config(resume, overrides, set_ or [])
    else:
        run_config = load_config(domain, method, config, overrides, set_)
    given = (
        epochs is not None
        or _sets_key(set_ or [], "trainer.epochs")
        or (config is not None and read_yaml(config).get("trainer", {}).get("epochs") is not None)
    )
    run_config = until_budget(run_config, epochs_given=given)
    run_dir = run_pretraining(run_config, resume=resume, progress_bar=level >= Verbosity.NORMAL)
    describe_run(run_dir)


def parse_loggers(option: str | None) -> list[str] | None:
    """``--logger tensorboard,wandb`` -> the list; ``none`` -> []; not given -> None."""
    if option is None:
        return None
    names = [name.strip() for name in option.split(",") if name.strip()]
    return [] if names == ["none"] else names


def _sets_key(sets: list[str], key: str) -> bool:
    return any(item.split("=", 1)[0].strip() == key for item in sets)


def until_budget(config: RunConfig, epochs_given: bool) -> RunConfig:
    """A time budget without an epoch count trains until the budget is spent: the config
    file's epochs are a default for runs without a budget, not a limit on one."""
    if config.trainer.max_time is None or epochs_given:
        return config
    trainer = config.trainer.model_copy(update={"epochs": None})
    return config.model_copy(update={"trainer": trainer})


def mpp_of_magnification(magnification: float, mpp: float | None) -> float:
    """µm/px of an objective magnification, by the usual convention 10 / magnification
    (40x ~ 0.25 µm/px, 20x ~ 0.5 µm/px); scanners differ slightly, so --mpp is exact."""
    if mpp is not None:
        raise DomainSSLError("Give either --mpp or --magnification, not both.")
    if magnification <= 0:
        raise DomainSSLError(f"--magnification must be positive (e.g. 20), got {magnification}.")
    return 10.0 / magnification


def resumed_config(run_dir: Path, overrides: dict[str, Any], sets: list[str]) -> RunConfig:
    """A run's saved config with the CLI's overrides on top (e.g. more epochs)."""
    tree = without_foreign_keys(read_yaml(run_dir / "config.yaml"))
    for key, value in overrides.items():
        if value is not None:
            set_dotted(tree, key, value)
    for item in sets:
        set_dotted(tree, *parse_set(item))
    return build_config(tree, str(run_dir / "config.yaml"))


def describe_run(run_dir: Path) -> None:
    """Print why the run stopped, where the run folder is and what it holds."""
    from domainssl.run_report import STOPPED, read_sessions

    sessions = read_sessions(run_dir)
    if sessions:
        last = sessions[-1]
        typer.echo(
            f"\nStopped because {STOPPED[last['stopped_by']]}: epoch {last['epochs']}, step "
            f"{last['steps']}, {last['seconds'] / 60:.1f} min of training, "
            f"{last['images_per_second']:.0f} images/s."
        )
    typer.secho(f"\nRun folder: {run_dir.resolve()}", fg=typer.colors.GREEN, bold=True)
    for relative, meaning in RUN_FILES.items():
        path = run_dir / relative
        if path.exists():
            files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
            size = sum(file.stat().st_size for file in files)
            typer.echo(f"  {relative:<24} {size / 1e6:8.2f} MB  {meaning}")
    skipped = run_dir / SKIPPED_INPUTS
    if skipped.is_file():
        lines = skipped.read_text().splitlines()
        typer.secho(f"{len(lines)} unreadable inputs were skipped:", fg=typer.colors.YELLOW)
        typer.echo("  " + "\n  ".join(lines))
