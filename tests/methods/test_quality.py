"""Short real runs on the embedded EuroSAT demo: no collapse; features beat random init."""

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.data.folder import ChipFolder, InMemoryChips
from domainssl.data.labeled import stratified_split
from domainssl.export import load_backbone
from domainssl.models.backbones import create_backbone
from domainssl.paths import DATASETS_DIR
from domainssl.transfer.classification.probe import extract_features, linear_probe

DEMO = DATASETS_DIR / "eurosat_demo"


def last_std_ratio(run: Path) -> float:
    with (run / "metrics.csv").open() as file:
        values = [r["train/embedding_std_ratio"] for r in csv.DictReader(file)]
    return float([v for v in values if v][-1])


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_short_real_run_does_not_collapse(method: str, tmp_path: Path) -> None:
    """BYOL and SimSiam have no negatives: their embedding std must stay away from 0."""
    sets = [
        "model.backbone=resnet10t",
        "data.batch_size=64",
        "trainer.epochs=3",
        "trainer.accelerator=cpu",
        "data.num_workers=0",
    ]
    args = ["pretrain", "--method", method, "--out", str(tmp_path), "--name", "q"]
    result = CliRunner().invoke(app, args + [f"--set={s}" for s in sets])
    assert result.exit_code == 0, result.output
    assert last_std_ratio(tmp_path / "q") > 0.3


@pytest.mark.slow
def test_pretrained_features_beat_random_init(tmp_path: Path) -> None:
    """The README's main job, then a linear probe on the demo's labels vs random init."""
    result = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path), "--name", "main"])
    assert result.exit_code == 0, result.output
    chips = InMemoryChips(ChipFolder(DEMO, size=64))
    labels = chips.labels.numpy()
    split = stratified_split(labels, test=0.3, val=0.2)
    backbone, meta = load_backbone(tmp_path / "main")
    trained = linear_probe(
        extract_features(backbone, chips.images, meta.mean, meta.std), labels, split
    )
    random = create_backbone(meta.timm_name, meta.in_chans, meta.small_input)
    baseline = linear_probe(
        extract_features(random, chips.images, meta.mean, meta.std), labels, split
    )
    assert trained.test_accuracy > baseline.test_accuracy
