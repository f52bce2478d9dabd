"""What a pretraining run tells its user when a session ends (normally, at ``--max-time``, on
SIGTERM, after a resume): ``training.json`` (each session: why it stopped, steps, time,
throughput), ``curves.png`` and ``report.md``."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import yaml
from lightning.pytorch.callbacks import Timer

from domainssl.io import atomic_write_text
from domainssl.progress import format_duration
from domainssl.reports import markdown_table, save_figure, write_report

TRAINING_LOG = "training.json"
StopReason = Literal["epochs", "time", "signal"]
STOPPED = {
    "epochs": "its last epoch was done",
    "time": "the time budget was spent",
    "signal": "it was stopped (SIGTERM / Ctrl-C) and checkpointed",
}
CURVES = {
    "train/loss": "loss",
    "train/lr": "learning rate",
    "train/embedding_std_ratio": "embedding std ratio (1 healthy, 0 collapsed)",
    "train/rankme": "RankMe (effective rank)",
    "monitor/knn_acc": "kNN accuracy (--monitor)",
}


def stop_reason(trainer: L.Trainer) -> StopReason:
    """Why ``fit`` returned: the time budget ran out, or the epochs were done."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
    remaining = None if timer is None else timer.time_remaining("train")
    return "time" if remaining is not None and remaining <= 0 else "epochs"


def record_session(
    run_dir: Path, trainer: L.Trainer, images_per_step: int, why: StopReason
) -> None:
    """Append this session to ``training.json``."""
    sessions = read_sessions(run_dir)
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
    seconds = timer.time_elapsed("train") if timer is not None else math.nan
    previous = sessions[-1] if sessions else {"steps": 0, "seconds": 0.0}
    steps = trainer.global_step - previous["steps"]
    session_seconds = seconds - previous["seconds"]  # the timer counts over sessions
    sessions.append({
        "ended": time.strftime("%Y-%m-%d %H:%M:%S"),
        "stopped_by": why,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "seconds": round(seconds, 1),
        "images_per_second": round(steps * images_per_step / max(session_seconds, 1e-9), 1),
        "processes": trainer.world_size,
    })  # fmt: skip
    atomic_write_text(run_dir / TRAINING_LOG, json.dumps(sessions, indent=2) + "\n")


def read_sessions(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / TRAINING_LOG
    return json.loads(path.read_text()) if path.is_file() else []


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of the watched metrics in ``metrics.csv``."""
    path = run_dir / "metrics.csv"
    curves: dict[str, list[tuple[int, float]]] = {key: [] for key in CURVES}
    if path.is_file():
        with path.open(newline="") as file:
            for row in csv.DictReader(file):
                for key, series in curves.items():
                    if row.get(key):
                        series.append((int(row["step"]), float(row[key])))
    return curves


def plot_curves(curves: dict[str, list[tuple[int, float]]], out: Path) -> None:
    """One panel per watched metric against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for axis, (key, title) in zip(axes.flat, CURVES.items(), strict=False):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        series = curves[key]
        if series:
            steps, values = zip(*series, strict=True)
            axis.plot(steps, values, marker="." if len(series) < 30 else None)
        else:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", color="grey")
        axis.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    save_figure(figure, out)


def write_run_report(run_dir: Path) -> None:
    """``curves.png`` and ``report.md`` of ``run_dir`` from what the run folder holds."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    meta_path = run_dir / "backbone.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    sessions, curves = read_sessions(run_dir), read_curves(run_dir)
    plot_curves(curves, run_dir / "curves.png")
    trainer, data, method = config["trainer"], config["data"], config["method"]
    limits = [f"{trainer['epochs']} epochs"] if trainer["epochs"] is not None else []
    limits += [f"{trainer['max_time']} of training"] if trainer["max_time"] else []
    facts = [
        f"Method: {method['name']}, backbone {config['model']['backbone']}"
        + (f", started from `{config['model']['init']}`" if config["model"]["init"] else ""),
        f"Data: `{meta['data_source'] if meta else data['path'] or 'embedded demo'}`"
        + (f", bands {', '.join(meta['band_names'])}" if meta else "")
        + f", {data['sample_size']} px samples, batch {data['batch_size']} per process.",
        f"Budget: {' or '.join(limits)}" + (", whichever ends first." if len(limits) > 1 else "."),
    ]
    if sessions:
        last = sessions[-1]
        facts += [
            f"Stopped because {STOPPED[last['stopped_by']]}: {last['epochs']} epochs, "
            f"{last['steps']} steps in {format_duration(last['seconds'])}"
            + (f" over {len(sessions)} sessions" if len(sessions) > 1 else "")
            + ".",
            f"Throughput (last session): {last['images_per_second']:.0f} images/s on "
            f"{last['processes']} process(es).",
        ]
    last_values = [(CURVES[key], f"{series[-1][1]:.4g}", series[-1][0])
                   for key, series in curves.items() if series]  # fmt: skip
    body = markdown_table(["last value", "", "at step"], last_values) if last_values else []
    if meta is not None:
        facts.append("Export: `backbone.safetensors` + `backbone.json` in this folder.")
        run = str(run_dir)
        next_commands = [
            f"domainssl transfer {run} --task classify --data labeled/   # linear probe",
            f"domainssl transfer {run} --task segment --data masks/",
            f"domainssl embed {run} --data archive/ --out features/",
            f"domainssl infer {run} large_image.tif --out embedding.tif",
        ]
    else:
        facts.append("No export yet (the run did not finish).")
        next_commands = [f"domainssl pretrain --resume {run_dir}"]
    write_report(
        run_dir / "report.md",
        f"Pretraining run {run_dir.name}",
        facts,
        body,
        [("training curves", "curves.png")],
        next_commands,
    )
