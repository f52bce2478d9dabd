"""What a run folder tells its user: report.md, curves.png, training.json, TensorBoard
events; and budgets that mean budgets (--max-time without --epochs trains until spent)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from conftest import FAST
from PIL import Image
from typer.testing import CliRunner

import domainssl.config
from domainssl.cli import app
from domainssl.commands.pretrain import until_budget
from domainssl.config import load_config

runner = CliRunner()
NO_EPOCHS = [f"--set={item}" for item in FAST if not item.startswith("trainer.epochs")]


def pretrain(data: Path, out: Path, *args: str) -> Path:
    result = runner.invoke(
        app, ["pretrain", "--data", str(data), "--out", str(out), "--name", "r", *args, *NO_EPOCHS]
    )
    assert result.exit_code == 0, result.output
    return out / "r"


def test_report_curves_and_tensorboard_after_a_normal_run(tif_chips: Path, tmp_path: Path) -> None:
    run = pretrain(tif_chips, tmp_path, "--epochs", "2")
    report = (run / "report.md").read_text()
    assert report.startswith(f"# Pretraining run {run.name}")
    assert "Stopped because its last epoch was done: 2 epochs, 2 steps" in report
    assert "Budget: 2 epochs." in report and "bands B1, B2, B3, B4" in report
    assert "| loss |" in report and "![training curves](curves.png)" in report
    assert f"domainssl transfer {run} --task classify" in report
    with Image.open(run / "curves.png") as curves:
        assert curves.format == "PNG" and curves.size[0] > 1000
    sessions = json.loads((run / "training.json").read_text())
    assert [s["stopped_by"] for s in sessions] == ["epochs"] and sessions[0]["steps"] == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/embedding_std_ratio"} <= set(tags), tags
    assert [event.step for event in events.Scalars("train/loss")] == [0, 1]  # every step


def test_max_time_without_epochs_trains_past_the_config_epochs(
    tif_chips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default config's epochs (here 2) are no limit on a run given only --max-time."""
    default = yaml.safe_load(domainssl.config.config_path("eo", "simclr").read_text())
    default["trainer"]["epochs"] = 2
    config = tmp_path / "eo-simclr.yaml"
    config.write_text(yaml.safe_dump(default))
    monkeypatch.setattr(domainssl.config, "config_path", lambda domain, method: config)
    run = pretrain(tif_chips, tmp_path, "--max-time", "00:00:08", "--logger", "none")
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["epochs"] is None
    session = json.loads((run / "training.json").read_text())[-1]
    assert session["stopped_by"] == "time" and session["epochs"] > 2, session
    assert session["seconds"] >= 8
    assert "Stopped because the time budget was spent" in (run / "report.md").read_text()
    assert not (run / "tensorboard").exists()  # --logger none


def test_with_epochs_and_max_time_whichever_ends_first_stops(
    tif_chips: Path, tmp_path: Path
) -> None:
    run = pretrain(tif_chips, tmp_path, "--epochs", "1", "--max-time", "00:10:00")
    report = (run / "report.md").read_text()
    assert "Budget: 1 epochs or 00:10:00 of training, whichever ends first." in report
    assert "Stopped because its last epoch was done" in report


def test_the_budget_rule_keeps_given_epochs_and_drops_the_default() -> None:
    config = load_config("pathology", overrides={"trainer.max_time": "00:20:00"})
    assert config.trainer.epochs == 10  # the pathology config's default
    assert until_budget(config, epochs_given=False).trainer.epochs is None
    assert until_budget(config, epochs_given=True).trainer.epochs == 10
    without_budget = load_config("pathology")
    assert until_budget(without_budget, epochs_given=False).trainer.epochs == 10


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb installed")
def test_a_logger_whose_package_is_missing_is_a_clear_error(
    tif_chips: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["pretrain", "--data", str(tif_chips), "--out", str(tmp_path), "--logger", "wandb"]
    )
    assert result.exit_code == 2
    assert "--logger wandb needs the wandb package" in result.output
    assert "pip install wandb" in result.output
