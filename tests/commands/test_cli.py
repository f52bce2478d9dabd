"""The CLI end to end through typer's CliRunner: a run folder, views, and clear errors."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST, fast
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.export import load_backbone

runner = CliRunner()


def pretrain(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["pretrain", *args, *[f"--set={s}" for s in FAST]])
    return result.exit_code, result.output


def test_pretrain_writes_a_complete_run_folder(tif_chips: Path, tmp_path: Path) -> None:
    code, output = pretrain("--data", str(tif_chips), "--out", str(tmp_path), "--name", "r")
    assert code == 0, output
    run = tmp_path / "r"
    for name in [
        "config.yaml",
        "environment.json",
        "band_stats.json",
        "metrics.csv",
        "checkpoints/last.ckpt",
        "backbone.safetensors",
        "backbone.json",
    ]:
        assert (run / name).is_file(), name
    assert "Run folder:" in output and str(run.resolve()) in output
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"] == str(tif_chips)
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"].startswith("2.") and env["git_commit"]
    backbone, meta = load_backbone(run)
    assert meta.in_chans == 4 and meta.band_names == ["B1", "B2", "B3", "B4"]
    assert backbone(torch.zeros(1, 4, 16, 16)).shape == (1, meta.feature_dim)
    assert len(meta.mean) == 4 and meta.method == "simclr"


def test_resume_continues_from_last_checkpoint(tif_chips: Path, tmp_path: Path) -> None:
    code, output = pretrain("--data", str(tif_chips), "--out", str(tmp_path), "--name", "r")
    assert code == 0, output
    result = runner.invoke(app, ["pretrain", "--resume", str(tmp_path / "r"), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    metrics = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    epochs = {line.split(",")[0] for line in metrics[1:]}
    assert epochs == {"0", "1"}  # both sessions are kept: epoch 0 before, epoch 1 after resuming


def test_max_time_stops_and_exports(tif_chips: Path, tmp_path: Path) -> None:
    code, output = pretrain(
        "--data",
        str(tif_chips),
        "--out",
        str(tmp_path),
        "--name",
        "t",
        "--max-time",
        "00:00:01",
        "--set=trainer.epochs=1000",
    )
    assert code == 0, output
    assert (tmp_path / "t" / "backbone.safetensors").is_file()


def test_views_command_writes_png(tif_chips: Path, tmp_path: Path) -> None:
    out = tmp_path / "views.png"
    result = runner.invoke(
        app,
        [
            "views",
            "--data",
            str(tif_chips),
            "--out",
            str(out),
            "--samples",
            "3",
            "--count",
            "2",
            "--set=data.sample_size=32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/no/such/folder"], "does not exist"),
        (["--set", "trainer.epoks=3"], "unknown key 'trainer.epoks'"),
        (["--method", "swav"], "No config for domain 'eo' and method 'swav'"),
        (["--max-time", "twenty"], "HH:MM:SS"),
        (["--set", "data.in_chans=3"], "has 4 bands but the config expects"),
        (["--backbone", "resnet19"], "Unknown backbone"),
        (
            ["--method", "byol", "--set", "method.queue_size=8"],
            "method 'byol' has no key 'queue_size'. Valid keys of byol: name, proj_hidden_dim",
        ),
        (["--set", "views.hed_bias=0.1"], "view preset 'eo' has no key 'hed_bias'"),
    ],
)
def test_bad_input_gives_one_clear_error_and_exit_2(
    args: list[str], message: str, tif_chips: Path, tmp_path: Path
) -> None:
    base = ["pretrain", "--data", str(tif_chips), "--out", str(tmp_path)]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_key_of_the_chosen_method_is_applied(tif_chips: Path, tmp_path: Path) -> None:
    args = ["pretrain", "--method", "moco", "--data", str(tif_chips), "--out", str(tmp_path)]
    sets = [*fast("moco"), "method.queue_size=512", "trainer.limit_train_batches=1"]
    result = runner.invoke(app, [*args, "--name", "m", *[f"--set={s}" for s in sets]])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert saved["method"]["queue_size"] == 512 and "pred_hidden_dim" not in saved["method"]


def test_help_lists_the_registered_methods() -> None:
    result = runner.invoke(app, ["pretrain", "--help"])
    assert result.exit_code == 0
    for name in ("simclr", "moco", "byol", "simsiam", "orl", "mmgl"):
        assert f"{name}:" in result.output


def test_corrupt_tiff_and_empty_folder_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "holds no images" in result.output
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.tif").write_bytes(b"II*\x00garbage")
    result = runner.invoke(app, ["pretrain", "--data", str(corrupt)])
    assert result.exit_code == 2 and "corrupt or truncated" in result.output


def test_crash_in_second_epoch_leaves_first_epoch_checkpoint(
    tif_chips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from domainssl.config import load_config
    from domainssl.methods.simclr import SimCLR
    from domainssl.pretrain import pretrain as run_pretraining

    def crash_in_epoch_two(self: SimCLR) -> None:
        if self.current_epoch == 1:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(SimCLR, "on_train_epoch_start", crash_in_epoch_two)
    config = load_config(
        "eo",
        "simclr",
        overrides={"data.path": str(tif_chips), "out": str(tmp_path), "name": "c"},
        sets=[*FAST, "trainer.epochs=3"],
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pretraining(config, progress_bar=False)
    checkpoint = torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] > 0
    assert not (tmp_path / "c" / "backbone.safetensors").exists()
