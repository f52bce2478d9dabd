"""A ViT backbone exported with its ``timm_kwargs`` goes through every downstream command:
classification and segmentation transfer (a simple feature pyramid), inference, embedding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import rasterio
import torch
from fixtures import write_chip_folder, write_geotiff, write_segmentation_folder
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.export import BackboneMeta, export_backbone, load_backbone
from domainssl.models.backbones import create_backbone
from domainssl.transfer.segmentation.model import ViTPyramid, build_segmenter

VIT = {"img_size": 16, "patch_size": 4, "dynamic_img_size": True, "depth": 2}
runner = CliRunner()


def vit_run(root: Path) -> Path:
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny_patch16_224", 3, False, VIT)
    meta = BackboneMeta("vit_tiny_patch16_224", False, 3, ["B1", "B2", "B3"], [60.0] * 3,
                        [30.0] * 3, 192, 32, "dino", "eo", "x", {}, timm_kwargs=VIT)  # fmt: skip
    export_backbone(backbone, meta, root)
    return root


def test_a_vit_export_loads_with_its_timm_kwargs(tmp_path: Path) -> None:
    backbone, meta = load_backbone(vit_run(tmp_path / "run"))
    assert meta.timm_kwargs == VIT
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 192)  # other sizes: dynamic


def test_the_vit_pyramid_keeps_the_backbones_keys_and_gives_four_levels(tmp_path: Path) -> None:
    run = vit_run(tmp_path / "run")
    _, meta = load_backbone(run)
    from safetensors.torch import load_file

    model = build_segmenter(meta, 2, load_file(str(run / "backbone.safetensors")))
    assert isinstance(model.encoder, ViTPyramid)
    levels = model.encoder(torch.randn(1, 3, 32, 32))
    assert [tuple(level.shape[-2:]) for level in levels] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_vit_classify_segment_infer_and_embed(tmp_path: Path) -> None:
    run = vit_run(tmp_path / "run")
    chips = write_chip_folder(tmp_path / "chips", fmt="jpg", per_class=8)
    result = runner.invoke(app, ["transfer", str(run), "--data", str(chips), "--accelerator",
                                 "cpu", "--out", str(tmp_path / "cls")])  # fmt: skip
    assert result.exit_code == 0, result.output
    seg = write_segmentation_folder(tmp_path / "seg", count=6, size=32)
    result = runner.invoke(app, ["transfer", str(run), "--task", "segment", "--data", str(seg),
                                 "--protocol", "finetune", "--epochs", "1", "--tile", "32",
                                 "--batch-size", "2", "--accelerator", "cpu", "--out",
                                 str(tmp_path / "segment")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "segment" / "metrics.json").read_text())["miou"] >= 0
    scene = write_geotiff(tmp_path / "scene.tif", np.full((3, 64, 64), 100, np.uint16))
    out = tmp_path / "prediction.tif"
    result = runner.invoke(app, ["infer", str(tmp_path / "segment"), str(scene), "--out",
                                 str(out), "--tile", "32", "--accelerator", "cpu",
                                 "--num-workers", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as written:
        assert written.shape == (64, 64)
    parquet = tmp_path / "emb.parquet"
    result = runner.invoke(app, ["embed", str(run), "--data", str(chips), "--out", str(parquet),
                                 "--accelerator", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert pq.read_table(parquet).num_rows == 16
