"""Shared fixtures: tiny generated data sets and a fast run config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures import write_chip_folder, write_scene

FAST = [
    "model.backbone=resnet10t",
    "data.sample_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.stats_samples=64",
    "views.crop_size=16",
    "method.proj_hidden_dim=32",
    "method.proj_dim=16",
    "method.pred_hidden_dim=16",
    "method.queue_size=32",
    "trainer.epochs=1",
    "trainer.accelerator=cpu",
]


@pytest.fixture
def tif_chips(tmp_path: Path) -> Path:
    return write_chip_folder(tmp_path / "tif_chips", bands=4)


@pytest.fixture
def jpg_chips(tmp_path: Path) -> Path:
    return write_chip_folder(tmp_path / "jpg_chips", fmt="jpg")


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene.tif", nodata_rows=40)
