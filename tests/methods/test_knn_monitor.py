"""Collapse signals and the online kNN monitor: RankMe against an SVD reference, the monitor's
value against an offline kNN on the exported backbone, its cadence, and clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from conftest import FAST
from fixtures import write_chip_folder
from test_methods import tiny_config
from torch import nn
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.data.labeled import load_labeled
from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, export_backbone, load_backbone, preprocess
from domainssl.methods.base import CollapseMonitor, rankme
from domainssl.methods.knn_monitor import KnnMonitor, MonitorSet, read_monitor_set
from domainssl.methods.simclr import SimCLR
from domainssl.models.knn import KNNHead

runner = CliRunner()


def reference_rankme(matrix: np.ndarray, eps: float = 1e-7) -> float:
    sigma = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    p = sigma / sigma.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def test_rankme_equals_an_svd_reference_and_spans_collapsed_to_isotropic() -> None:
    generator = torch.Generator().manual_seed(0)
    for shape in [(20, 6), (5, 12), (64, 64)]:
        matrix = torch.randn(*shape, generator=generator) * torch.rand(
            shape[1], generator=generator
        )
        assert rankme(matrix) == pytest.approx(reference_rankme(matrix.numpy()), rel=1e-4)
        assert rankme(1000 * matrix) == pytest.approx(rankme(matrix), rel=1e-4)  # scale-free
    collapsed = torch.randn(256, 1, generator=generator) @ torch.randn(1, 32, generator=generator)
    assert rankme(collapsed) == pytest.approx(1.0, abs=1e-3)
    isotropic = torch.randn(2048, 64, generator=generator)
    assert 0.97 * 64 < rankme(isotropic) <= 64 * 1.001  # bounded by min(rows, dim)
    assert np.isnan(rankme(torch.full((4, 3), float("nan"))))


def test_collapse_monitor_ranks_the_last_rows_of_the_epoch() -> None:
    monitor = CollapseMonitor(rank_rows=100)
    batches = [torch.randn(48, 16) for _ in range(5)]
    for batch in batches:
        monitor.update(batch)
    assert sum(len(rows) for rows in monitor.recent) < 100 + 48  # bounded memory
    assert monitor.rank() == pytest.approx(rankme(torch.cat(batches)[-100:]), rel=1e-6)


def random_label_set(root: Path, bands: int = 4) -> Path:
    """``root/train.csv`` and ``root/test.csv`` (36 images each) of 3 classes drawn at random:
    a kNN scores neither 0 nor 1 on it, so equal scores mean equal features and votes."""
    pool = write_chip_folder(root / "images", classes=2, per_class=36, bands=bands, seed=5)
    files = sorted(pool.rglob("*.tif"))
    labels = np.random.default_rng(1).integers(0, 3, len(files))
    rows = [f"{file.relative_to(root)},c{label}" for file, label in zip(files, labels, strict=True)]
    (root / "train.csv").write_text("\n".join(rows[::2]))
    (root / "test.csv").write_text("\n".join(rows[1::2]))
    return root


def test_monitor_features_equal_the_exported_backbones_on_the_same_set(tmp_path: Path) -> None:
    labeled = random_label_set(tmp_path / "labeled")
    bands, mean, std = ["B1", "B2", "B3", "B4"], [120.0, 130.0, 140.0, 150.0], [40.0, 50, 60, 70]
    method = SimCLR(tiny_config("simclr"), bands, mean, std)
    monitor = KnnMonitor(labeled, size=24)  # resized from the chips' 32 px
    monitor.prepare(cast(Any, SimpleNamespace(datamodule=None)), method)
    meta = BackboneMeta("resnet10t", True, 4, bands, mean, std, 512, 24, "simclr", "eo", "x", {})
    export_backbone(method.backbone, meta, tmp_path / "run")
    backbone, meta = load_backbone(tmp_path / "run")
    data = load_labeled(labeled, meta.input_size, meta.in_chans)
    with torch.no_grad():
        offline = backbone(preprocess(meta, data.images))  # (72, D)
    order = np.concatenate([data.split.train, data.split.val, data.split.test])
    assert monitor.data is not None and torch.equal(monitor.data.targets, data.targets[order])
    assert torch.allclose(monitor.features(method.backbone), offline[order], atol=1e-5)
    assert method.backbone.training  # train mode restored


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-epoch run monitored every 2 epochs (after epochs 2 and 3): (run folder, set)."""
    root = tmp_path_factory.mktemp("monitored")
    chips = write_chip_folder(root / "chips", bands=4)
    labeled = random_label_set(root / "labeled")
    args = ["pretrain", "--data", str(chips), "--out", str(root), "--name", "r"]
    args += ["--monitor", str(labeled), *[f"--set={s}" for s in FAST]]
    args += ["--set=trainer.epochs=3", "--set=trainer.monitor_every_n_epochs=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "r", labeled


def metric_rows(run: Path, key: str) -> list[tuple[int, float]]:
    with (run / "metrics.csv").open() as file:
        return [(int(r["epoch"]), float(r[key])) for r in csv.DictReader(file) if r.get(key)]


def test_monitor_value_equals_an_offline_knn_on_the_exported_backbone(
    monitored_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, labeled = monitored_run
    logged = metric_rows(run, "monitor/knn_acc")[-1][1]
    backbone, meta = load_backbone(run)
    data = load_labeled(labeled, meta.input_size, meta.in_chans)
    with torch.no_grad():
        features = backbone(preprocess(meta, data.images))  # (72, D)
    bank, test = np.concatenate([data.split.train, data.split.val]), data.split.test
    head = KNNHead(features[bank], data.targets[bank], len(data.classes))
    offline = float((head(features[test]).argmax(1) == data.targets[test]).float().mean())
    assert 0 < offline < 1 and logged == pytest.approx(offline, abs=1e-6)
    out = tmp_path / "knn"
    args = ["transfer", str(run), "--data", str(labeled), "--protocol", "knn", "--out", str(out)]
    result = runner.invoke(app, [*args, "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    transferred = json.loads((out / "metrics.json").read_text())["accuracy"]
    assert logged == pytest.approx(transferred, abs=1e-6)  # = `transfer --protocol knn`


def test_monitor_runs_every_n_epochs_and_after_the_last(monitored_run: tuple[Path, Path]) -> None:
    run, _ = monitored_run
    assert [epoch for epoch, _ in metric_rows(run, "monitor/knn_acc")] == [1, 2]
    ranks = metric_rows(run, "train/rankme")
    assert [epoch for epoch, _ in ranks] == [0, 1, 2]
    assert all(1 <= rank <= 8 * 1.001 for _, rank in ranks)  # one batch of 8 rows per epoch


def test_a_monitor_set_with_other_bands_exits_2_naming_it(tmp_path: Path) -> None:
    chips = write_chip_folder(tmp_path / "chips", bands=4)
    labeled = write_chip_folder(tmp_path / "rgb_set", bands=3, per_class=4)
    args = ["pretrain", "--data", str(chips), "--out", str(tmp_path), "--name", "r"]
    result = runner.invoke(app, [*args, "--monitor", str(labeled), *[f"--set={s}" for s in FAST]])
    assert result.exit_code == 2, result.output
    assert f"Monitor set {labeled}" in result.output and "has 3 bands" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_monitor_set_errors_and_sample_cap(tmp_path: Path) -> None:
    with pytest.raises(DomainSSLError, match="Monitor set .*missing does not exist"):
        read_monitor_set(tmp_path / "missing", 16, 4, 100)
    one_class = write_chip_folder(tmp_path / "one", classes=1, per_class=6)
    with pytest.raises(DomainSSLError, match=r"one class \(class_0\).* at least 2"):
        read_monitor_set(one_class, 16, 4, 100)
    folders = write_chip_folder(tmp_path / "set", classes=2, per_class=20)
    rows = [f"{p.relative_to(folders)},a;b" for p in sorted(folders.rglob("*.tif"))]
    (folders / "multi.csv").write_text("\n".join(rows))
    with pytest.raises(DomainSSLError, match="one label per image"):
        read_monitor_set(folders / "multi.csv", 16, 4, 100)
    capped = read_monitor_set(folders, 16, 4, max_samples=20)
    assert len(capped.bank) + len(capped.queries) <= 20 and len(capped.images) <= 20
    assert capped.images.shape[1:] == (4, 16, 16) and len(capped.queries) >= 1


def test_monitor_features_restore_each_module_mode() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Dropout(0.5))
    backbone[3].eval()  # a module kept in eval mode by its owner stays so
    monitor = KnnMonitor(Path("unused"), size=2)
    inputs = torch.randn(10, 3, 2, 2)
    monitor.inputs = inputs
    monitor.data = MonitorSet(
        inputs, torch.arange(10) % 2, ["a", "b"], np.arange(6), np.arange(6, 10)
    )
    accuracy = monitor.accuracy(backbone)
    assert [m.training for m in backbone.modules()] == [True, True, True, True, False]
    with torch.no_grad():
        expected = backbone.eval()(inputs)  # eval: BatchNorm running stats, no dropout
    assert torch.equal(monitor.features(backbone), expected)
    assert 0 <= accuracy <= 1
