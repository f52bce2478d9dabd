"""Shared fixtures: tiny generated data sets and a fast run config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures import write_chip_folder, write_scene

FAST_RUN = [
    "model.backbone=resnet10t",
    "data.sample_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.stats_samples=64",
    "trainer.epochs=1",
    "trainer.accelerator=cpu",
]
FAST_SECTIONS = {
    "views": {"crop_size": 16},
    "method": {
        "proj_hidden_dim": 32,
        "proj_dim": 16,
        "pred_hidden_dim": 16,
        "queue_size": 32,
        "out_dim": 64,
        "hidden_dim": 32,
        "bottleneck_dim": 16,
        "local_crops": 2,
        "decoder_dim": 32,
        "decoder_depth": 1,
        "decoder_heads": 2,
    },
}
VIT_ONLY = ("mae", "ibot")
"""Methods that need a ViT: their fast runs use a 2-block ViT-Tiny."""


def fast(method: str = "simclr", preset: str = "eo") -> list[str]:
    """``--set`` items for a tiny, fast run of ``method`` with the ``preset`` views: the
    small sizes of :data:`FAST_SECTIONS` that the method's and preset's sections have."""
    import domainssl.methods  # noqa: F401  (registers the methods and view presets)
    from domainssl.config import METHOD_CONFIGS, VIEW_CONFIGS

    models = {"method": METHOD_CONFIGS.models[method], "views": VIEW_CONFIGS.models[preset]}
    items = [
        f"{section}.{key}={value}"
        for section, values in FAST_SECTIONS.items()
        for key, value in values.items()
        if key in models[section].model_fields
    ]
    if method in VIT_ONLY:
        items += ["model.backbone=vit_tiny_patch16_224", "model.timm_kwargs={depth: 2}"]
    return FAST_RUN + items


FAST = fast("simclr")
"""The fast settings of SimCLR on EO views (the default method and preset)."""


@pytest.fixture
def tif_chips(tmp_path: Path) -> Path:
    return write_chip_folder(tmp_path / "tif_chips", bands=4)


@pytest.fixture
def jpg_chips(tmp_path: Path) -> Path:
    return write_chip_folder(tmp_path / "jpg_chips", fmt="jpg")


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene.tif", nodata_rows=40)
