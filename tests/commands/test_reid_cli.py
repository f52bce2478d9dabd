"""`domainssl pretrain --domain reid --method mmgl` and `domainssl transfer --task reid`
end to end on generated SYSU-MM01, RegDB and LLCM layouts, and their clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fast
from reid_fixtures import write_llcm, write_rand_perm_cam, write_regdb, write_sysu
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.export import load_backbone
from domainssl.methods.mmgl import IR_WEIGHTS
from domainssl.paths import CONFIGS_DIR
from domainssl.transfer.reid.transfer import ReidSettings, transfer_reid

runner = CliRunner()
REID_FAST = [
    *fast("mmgl", "reid"),
    "data.person_size=[32,16]",
    "method.stripes=4",
    "method.permutations=24",
]


def pretrain(data: Path, out: Path, *sets: str) -> Path:
    args = ["pretrain", "--domain", "reid", "--method", "mmgl", "--data", str(data)]
    args += ["--out", str(out), "--name", "run", "--epochs", "1"]
    result = runner.invoke(app, args + [f"--set={s}" for s in [*REID_FAST, *sets]])
    assert result.exit_code == 0, result.output
    return out / "run"


def transfer(run: Path, data: Path, *options: str) -> tuple[int, str]:
    args = ["transfer", str(run), "--task", "reid", "--data", str(data), "--accelerator", "cpu"]
    result = runner.invoke(app, args + list(options))
    return result.exit_code, result.output


def test_sysu_pretrain_exports_and_transfer_reports_both_protocols(tmp_path: Path) -> None:
    sysu = write_sysu(tmp_path / "SYSU-MM01")
    run = pretrain(sysu, tmp_path)
    _, meta = load_backbone(run)
    assert meta.method == "mmgl" and meta.domain == "reid" and meta.in_chans == 3
    assert meta.config["data"]["person_size"] == [32, 16]
    assert not (run / IR_WEIGHTS).exists()
    metrics_csv = (run / "metrics.csv").read_text()
    assert "train/perm_acc_epoch" in metrics_csv and "train/cycle_loss_epoch" in metrics_csv
    code, output = transfer(run, sysu)
    assert code == 0, output
    metrics = json.loads((tmp_path / "run-reid-all" / "metrics.json").read_text())
    assert metrics["protocol"] == "all" and metrics["trials"] == 10
    assert metrics["dataset"] == "SYSU-MM01" and len(metrics["per_trial"]) == 10
    assert metrics["queries"] == 3 * 2 * 2  # 3 test ids x cams 3, 6 x 2 images
    assert metrics["gallery"] == 3 * 4 - 2  # one per id and camera; id 7 lacks cams 4, 5
    for key in ("rank1", "rank10", "rank20", "mAP", "mINP"):
        assert 0 <= metrics[key] <= 1
    report = (tmp_path / "run-reid-all" / "report.md").read_text()
    assert "all-search" in report and "10 trials" in report and "mINP" in report
    code, output = transfer(
        run, sysu, "--protocol", "indoor", "--trials", "2", "--out", str(tmp_path / "in")
    )
    assert code == 0, output
    indoor = json.loads((tmp_path / "in" / "metrics.json").read_text())
    assert indoor["protocol"] == "indoor" and indoor["trials"] == 2 and indoor["gallery"] == 6
    assert "indoor-search" in (tmp_path / "in" / "report.md").read_text()


def test_two_stream_regdb_exports_infrared_backbone_and_evaluates(tmp_path: Path) -> None:
    regdb = write_regdb(tmp_path / "RegDB", identities=8, per_identity=2, trials=2)
    run = pretrain(regdb, tmp_path, "method.two_stream=true")
    assert (run / IR_WEIGHTS).is_file()
    code, output = transfer(run, regdb, "--protocol", "t2v", "--trials", "2")
    assert code == 0, output
    metrics = json.loads((tmp_path / "run-reid-t2v" / "metrics.json").read_text())
    assert metrics["two_stream"] and metrics["trials"] == 2 and metrics["dataset"] == "RegDB"
    assert metrics["queries"] == metrics["gallery"] == 4 * 2
    code, output = transfer(run, regdb, "--trials", "3")
    assert code == 2 and "trials [3]" in output
    code, output = transfer(run, regdb, "--protocol", "indoor")
    assert code == 2 and "v2t or t2v" in output
    code, output = transfer(run, regdb, "--baseline", "random", "--trials", "1")
    assert code == 0, output
    random = json.loads((tmp_path / "run-reid-v2t-random" / "metrics.json").read_text())
    assert random["baseline"] == "random" and not random["two_stream"]


def test_reid_without_data_says_how_to_get_it(tmp_path: Path) -> None:
    args = ["pretrain", "--domain", "reid", "--method", "mmgl", "--out", str(tmp_path)]
    result = runner.invoke(app, args + [f"--set={s}" for s in REID_FAST])
    assert result.exit_code == 2
    assert "cannot be bundled" in result.output and "SYSU-MM01" in result.output
    assert not list(tmp_path.iterdir())  # no empty run folder left behind
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, [*args, "--data", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no known re-ID layout" in result.output


def test_reid_protocol_is_refused_for_classification(tmp_path: Path) -> None:
    run = pretrain(write_sysu(tmp_path / "SYSU-MM01"), tmp_path)
    result = runner.invoke(
        app, ["transfer", str(run), "--data", str(tmp_path), "--protocol", "all"]
    )
    assert result.exit_code == 2 and "--task reid" in result.output


@pytest.mark.parametrize("config", sorted((CONFIGS_DIR / "reid").glob("*.yaml")), ids=str)
def test_reid_config_runs_on_generated_data(config: Path, tmp_path: Path) -> None:
    sysu = write_sysu(tmp_path / "SYSU-MM01", size=(64, 32))
    args = ["pretrain", "--config", str(config), "--data", str(sysu), "--out", str(tmp_path)]
    sets = [*fast("mmgl", "reid"), "trainer.limit_train_batches=2"]
    result = runner.invoke(app, [*args, "--name", "smoke", *[f"--set={s}" for s in sets]])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "smoke" / "backbone.safetensors").is_file()


def test_ddp_mmgl_run_keeps_replicas_identical(tmp_path: Path) -> None:
    sysu = write_sysu(tmp_path / "SYSU-MM01")
    command = [sys.executable, "-m", "domainssl", "pretrain", "--domain", "reid"]
    command += ["--method", "mmgl", "--data", str(sysu), "--devices", "2"]
    command += ["--accelerator", "cpu", "--out", str(tmp_path), "--name", "ddp", "--epochs", "2"]
    sets = [*REID_FAST, "method.two_stream=true", "trainer.strategy=ddp", "data.batch_size=4"]
    command += [f"--set={item}" for item in sets if not item.startswith("trainer.epochs")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "weights identical on 2 processes" in output
    assert (tmp_path / "ddp" / IR_WEIGHTS).is_file()


def test_llcm_pretrain_and_transfer_and_sysu_official_draws(tmp_path: Path) -> None:
    llcm = write_llcm(tmp_path / "LLCM")
    run = pretrain(llcm, tmp_path)  # LLCM's training lists, unlabeled
    code, output = transfer(run, llcm, "--trials", "2")  # LLCM's first protocol: i2v
    assert code == 0, output
    metrics = json.loads((tmp_path / "run-reid-i2v" / "metrics.json").read_text())
    assert metrics["dataset"] == "LLCM" and metrics["protocol"] == "i2v"
    assert metrics["trials"] == 2 and metrics["identities"] == 3
    assert metrics["queries"] == 3 * 3 * 2  # near-infrared cams 1, 2, 4 (not cam3)
    assert metrics["gallery"] == 3 * 3 - 1  # one per id and visible camera; one lacks cam3
    assert metrics["gallery_draw"] == "seeded single-shot, seed = trial (DEEN's draws)"
    report = (tmp_path / "run-reid-i2v" / "report.md").read_text()
    assert "infrared-to-visible" in report and "eval_llcm" in report
    # v2i through the API (the CLI's --protocol choices are its own module's)
    v2i, _ = transfer_reid(run, llcm, tmp_path / "v2i", ReidSettings(protocol="v2i", trials=2))
    assert v2i["protocol"] == "v2i" and (v2i["queries"], v2i["gallery"]) == (16, 9)
    assert "visible-to-infrared" in (tmp_path / "v2i" / "report.md").read_text()

    sysu = write_sysu(tmp_path / "SYSU-MM01")
    write_rand_perm_cam(sysu, trials=3)
    code, output = transfer(run, sysu, "--trials", "3", "--out", str(tmp_path / "official"))
    assert code == 0, output
    official = json.loads((tmp_path / "official" / "metrics.json").read_text())
    assert official["gallery_draw"] == "official rand_perm_cam.mat"
    assert official["gallery"] == 3 * 4 - 2 and official["trials"] == 3
    report = (tmp_path / "official" / "report.md").read_text()
    assert "gallery: official rand_perm_cam.mat" in report
    code, output = transfer(run, sysu)  # 10 trials asked, the file holds 3
    assert code == 2 and "holds 3 trials" in output and "--trials 3 or fewer" in output
