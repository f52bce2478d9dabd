"""Every YAML in configs/ runs a fast dev run on CPU (tiny backbone, 2 batches)."""

from pathlib import Path

import pytest
import yaml
from conftest import fast
from reid_fixtures import write_sysu
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.paths import CONFIGS_DIR

CONFIGS = sorted(CONFIGS_DIR.glob("*/*.yaml"))


def test_configs_exist() -> None:
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_runs(config: Path, tmp_path: Path) -> None:
    tree = yaml.safe_load(config.read_text())
    fast_sets = fast(tree["method"]["name"], tree["views"]["preset"])
    sets = [*fast_sets, "trainer.limit_train_batches=2", "data.samples_per_epoch=32"]
    args = ["pretrain", "--config", str(config), "--out", str(tmp_path), "--name", "smoke"]
    if config.parent.name == "reid":  # no embedded demo data: a generated SYSU-MM01 layout
        args += ["--data", str(write_sysu(tmp_path / "SYSU-MM01", size=(64, 32)))]
    result = CliRunner().invoke(app, args + [f"--set={s}" for s in sets])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "smoke" / "backbone.safetensors").is_file()
