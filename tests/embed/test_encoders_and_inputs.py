"""What `domainssl embed` embeds with (a transfer output's backbone, cached pretrained
weights) and what it takes as input (flat chip folders stay chips; files that look like
slides are named, in embed and in pretrain)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import timm
import torch
from conftest import FAST
from fixtures import write_geotiff, write_hf_cache, write_infer_models, write_slide
from safetensors.torch import load_file
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.embed.items import is_archive
from domainssl.export import preprocess, read_meta
from domainssl.transfer.classification.model import load_classifier

runner = CliRunner()


def flat_chips(folder: Path, count: int = 4, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(0, 4000, (3, size, size)).astype(np.uint16)
        write_geotiff(folder / f"chip_{i}.tif", image)
    return folder


def test_a_flat_folder_of_small_geotiffs_is_chips_and_a_large_one_a_scene(tmp_path: Path) -> None:
    chips = flat_chips(tmp_path / "chips")
    assert not is_archive(chips)
    write_geotiff(chips / "scene.tif", np.zeros((3, 600, 600), np.uint16))
    assert is_archive(chips)


def test_a_transfer_output_embeds_with_its_fine_tuned_backbone(tmp_path: Path) -> None:
    classify = write_infer_models(tmp_path / "models")["classify"]
    chips = flat_chips(tmp_path / "chips")
    out = tmp_path / "emb.parquet"
    result = runner.invoke(app, ["embed", str(classify), "--data", str(chips), "--out", str(out),
                                 "--accelerator", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pydict()
    classifier, meta = load_classifier(classify)[:2]
    import rasterio

    with rasterio.open(chips / "chip_0.tif") as src:
        image = torch.from_numpy(src.read().astype(np.float32))[None]
    row = [Path(p).name for p in table["path"]].index("chip_0.tif")
    with torch.no_grad():
        expected = classifier.backbone.eval()(preprocess(meta, image))[0]
    np.testing.assert_allclose(table["embedding"][row], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_chips_embed_in_bf16_close_to_float32(tmp_path: Path) -> None:
    model = write_infer_models(tmp_path / "models")["embed"]
    chips = flat_chips(tmp_path / "chips", count=6)
    tables = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / f"{precision}.parquet"
        result = runner.invoke(app, ["embed", str(model), "--data", str(chips), "--out", str(out),
                                     "--accelerator", "cpu", "--precision", precision])  # fmt: skip
        assert result.exit_code == 0, result.output
        tables[precision] = np.array(pq.read_table(out).to_pydict()["embedding"])
    exact, half = tables["32-true"], tables["bf16-mixed"]
    error = np.linalg.norm(half - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert not np.array_equal(exact, half) and error.max() < 0.02, error


def test_cached_hub_weights_embed_with_their_own_normalization(tmp_path: Path) -> None:
    weights = load_file(write_hf_cache(tmp_path / "hf"))
    chips = flat_chips(tmp_path / "chips", size=64)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "domainssl", "embed", "hf-hub:org/tiny", "--data",
               str(chips), "--out", str(tmp_path / "out"), "--tile", "64",
               "--accelerator", "cpu"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = read_meta(tmp_path / "out" / ".embed" / "encoder")
    assert meta.timm_name == "resnet10t" and meta.mean == [0.485 * 255, 0.456 * 255, 0.406 * 255]
    model = timm.create_model("resnet10t", num_classes=0)
    model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("fc.")})
    table = pq.read_table(tmp_path / "out" / "embeddings.parquet").to_pydict()
    row = [Path(p).name for p in table["path"]].index("chip_0.tif")
    import rasterio

    with rasterio.open(chips / "chip_0.tif") as src:
        image = torch.from_numpy(src.read().astype(np.float32))[None]
    with torch.no_grad():
        expected = model.eval()(preprocess(meta, image))[0]
    np.testing.assert_allclose(table["embedding"][row], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_pretrain_names_a_garbage_slide_instead_of_dropping_it(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    write_slide(slides / "good.tif", tissue=[(256, 256, 1792, 1280)])
    (slides / "broken.svs").write_bytes(b"not really a slide")
    args = ["pretrain", "--domain", "pathology", "--data", str(slides), "--out", str(tmp_path),
            "--name", "p", "--magnification", "10", *[f"--set={s}" for s in FAST],
            "--set=data.samples_per_epoch=16"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    skipped = (tmp_path / "p" / "skipped_inputs.txt").read_text()
    assert "broken.svs: not a slide: OpenSlide does not recognise its format" in skipped
