"""`domainssl infer` on GeoTIFFs: georeferencing, nodata, seamless blending, streaming
against in-memory references, atomic output, band checks and embedding maps."""

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from fixtures import write_geotiff, write_infer_models
from torch import nn
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.errors import DomainSSLError
from domainssl.export import load_backbone, preprocess, read_meta
from domainssl.infer.geotiff import resumable as partial_module
from domainssl.infer.geotiff import streaming
from domainssl.infer.geotiff.infer import infer_geotiff
from domainssl.infer.tiles import blend_weights
from domainssl.models.inference import for_inference
from domainssl.transfer.classification.model import load_classifier
from domainssl.transfer.segmentation.model import load_segmenter

CLASSES = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_infer_models(tmp_path_factory.mktemp("models"), CLASSES)


def scene_array(bands: int = 3) -> np.ndarray:
    """(bands, 300, 100) uint16 with two nodata (0) regions: the top 40 rows and a
    bottom-right block that whole tiles fall into."""
    array = np.random.default_rng(0).integers(100, 3000, (bands, 300, 100)).astype(np.uint16)
    array[:, :40] = 0
    array[:, 200:, 60:] = 0
    return array


INVALID = (scene_array() == 0).all(axis=0)  # (H, W): the scene's nodata pixels


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_geotiff(tmp_path / "scene.tif", scene_array(), nodata=0)


def read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    with rasterio.open(path) as src:
        return src.read(), src.profile


def cell_validity(valid: np.ndarray, stride: int) -> np.ndarray:
    """Per stride x stride cell: at least half of its in-image pixels are valid."""
    rows, cols = (range(0, length, stride) for length in valid.shape)
    return np.array(
        [[valid[r : r + stride, c : c + stride].mean() >= 0.5 for c in cols] for r in rows]
    )


def test_segmentation_keeps_georeferencing_and_nodata(models: dict, scene: Path) -> None:
    out = scene.parent / "out" / "labels.tif"
    summary = infer_geotiff(models["segment"], scene, out, tile=32, overlap=8, num_workers=0)
    labels, profile = read(out)
    with rasterio.open(scene) as src:
        assert (profile["crs"], profile["transform"]) == (src.crs, src.transform)
    assert profile["nodata"] == 255 and profile["dtype"] == "uint8"
    assert (profile["blockxsize"], profile["compress"]) == (256, "deflate")
    assert (labels[0][INVALID] == 255).all() and (labels[0][~INVALID] < CLASSES).all()
    assert summary.outputs == [out] and summary.tiles == 13 * 4
    assert summary.tiles_run < summary.tiles  # tiles inside the nodata block are skipped


def test_constant_prediction_blends_without_seams(models: dict, scene: Path) -> None:
    tiled, single = scene.parent / "tiled.tif", scene.parent / "single.tif"
    infer_geotiff(models["constant"], scene, tiled, tile=32, overlap=12, num_workers=0)
    summary = infer_geotiff(models["constant"], scene, single, tile=304, num_workers=0)
    assert summary.tiles == 1
    assert np.array_equal(read(tiled)[0], read(single)[0])
    assert np.array_equal(read(tiled)[0][0], np.where(INVALID, 255, 1))


class PixelModel(nn.Module):
    """Class probabilities (B, K, H, W) from each pixel alone: a fixed 1x1 conv + softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, CLASSES, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(CLASSES)[..., None, None])  # class = top band

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).softmax(dim=1)


def test_blending_of_a_per_pixel_model_equals_whole_image_prediction(
    models: dict, scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming, "load_network", lambda model_dir, spec: PixelModel())
    out = scene.parent / "probabilities.tif"
    infer_geotiff(models["segment"], scene, out, tile=32, overlap=12, probabilities=True)
    probabilities, profile = read(out)
    image = torch.from_numpy(scene_array().astype(np.float32))
    with torch.no_grad():
        expected = PixelModel()(preprocess(read_meta(models["embed"]), image[None]))[
            0
        ].numpy()  # (K, H, W)
    expected[:, INVALID] = np.nan
    assert profile["dtype"] == "float32" and np.isnan(profile["nodata"])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    infer_geotiff(models["segment"], scene, out, tile=32, overlap=12, num_workers=0)
    labels = np.where(np.isnan(expected[0]), 255, np.nan_to_num(expected).argmax(0))
    assert np.array_equal(read(out)[0][0], labels)


def blended_reference(model_dir: Path, image: np.ndarray, tile: int, overlap: int) -> np.ndarray:
    """In-memory blend of softmax tile outputs (K, H, W) over a zero-padded whole image."""
    segmenter, meta, _ = load_segmenter(model_dir)
    (bands, height, width), stride = image.shape, tile - overlap
    rows = 1 + math.ceil(max(height - tile, 0) / stride)
    cols = 1 + math.ceil(max(width - tile, 0) / stride)
    padded = np.zeros((bands, (rows - 1) * stride + tile, (cols - 1) * stride + tile), np.float32)
    padded[:, :height, :width] = image
    sums = np.zeros((CLASSES, *padded.shape[1:]), np.float32)
    weights = np.zeros(padded.shape[1:], np.float32)
    window = blend_weights(tile)
    for top in range(0, rows * stride, stride):
        for left in range(0, cols * stride, stride):
            crop = torch.from_numpy(padded[None, :, top : top + tile, left : left + tile])
            with torch.no_grad():
                probabilities = segmenter(preprocess(meta, crop)).softmax(1)[0].numpy()
            sums[:, top : top + tile, left : left + tile] += probabilities * window
            weights[top : top + tile, left : left + tile] += window
    return sums[:, :height, :width] / weights[:height, :width]


def test_streamed_segmentation_matches_an_in_memory_reference(models: dict, scene: Path) -> None:
    out = scene.parent / "streamed.tif"
    run = {"model_dir": models["segment"], "source": scene, "out": out, "tile": 32, "overlap": 10}
    infer_geotiff(**run, batch_size=5, probabilities=True, num_workers=2)  # batches straddle rows
    streamed, _ = read(out)
    expected = blended_reference(models["segment"], scene_array().astype(np.float32), 32, 10)
    assert np.isnan(streamed[:, INVALID]).all()
    np.testing.assert_allclose(streamed[:, ~INVALID], expected[:, ~INVALID], atol=1e-5)
    infer_geotiff(**run, batch_size=5, num_workers=0)
    assert np.array_equal(read(out)[0][0], np.where(INVALID, 255, expected.argmax(0)))


def test_classification_map_is_stride_scaled_and_matches_per_tile_scores(
    models: dict, tmp_path: Path
) -> None:
    image = scene_array().astype(np.float32)
    image[:, :40] = np.nan  # float input: NaN is nodata, no nodata tag
    source = write_geotiff(tmp_path / "float.tif", image)
    out = tmp_path / "classes.tif"
    infer_geotiff(models["classify"], source, out, overlap=8, num_workers=0)
    labels, profile = read(out)
    stride, lead = 24, 4  # tile 32 = the backbone's input size, centred on its cell
    with rasterio.open(source) as src:
        assert profile["transform"] == src.transform * Affine.scale(stride)
    assert labels.shape == (1, math.ceil(300 / stride), math.ceil(100 / stride))
    valid = np.asarray(np.isfinite(image).all(axis=0))  # no nodata tag: zeros are data
    cells = cell_validity(valid, stride)
    assert (labels[0][~cells] == 255).all() and not cells[:2].any() and cells[2:, :3].all()
    classifier, meta, _ = load_classifier(models["classify"])
    padded = np.zeros((3, 300 + 2 * 32, 100 + 2 * 32), np.float32)
    padded[:, lead : lead + 300, lead : lead + 100] = np.where(valid, image, 0)
    crops = [padded[:, r * stride : r * stride + 32, c * stride : c * stride + 32]
             for r in range(labels.shape[1]) for c in range(labels.shape[2])]  # fmt: skip
    with torch.no_grad():
        scores = classifier.scores(preprocess(meta, torch.from_numpy(np.stack(crops))))
    expected = scores.T.reshape(CLASSES, *labels.shape[1:]).numpy()  # (K, rows, cols)
    assert np.array_equal(labels[0][cells], expected.argmax(0)[cells])
    infer_geotiff(models["classify"], source, out, overlap=8, probabilities=True, num_workers=0)
    probabilities, profile = read(out)
    assert profile["dtype"] == "float32" and np.isnan(probabilities[:, ~cells]).all()
    np.testing.assert_allclose(probabilities[:, cells], expected[:, cells], atol=1e-6)


@pytest.mark.parametrize(
    ("error", "cog", "workers"), [(RuntimeError, False, 2), (KeyboardInterrupt, True, 0)]
)
def test_an_interrupted_run_leaves_no_file(
    models: dict, scene: Path, monkeypatch: pytest.MonkeyPatch, error: type, cog: bool, workers: int
) -> None:
    class FailsOnThirdBatch(PixelModel):
        calls = 0

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 3:
                raise error("stop")
            return super().forward(images)

    monkeypatch.setattr(streaming, "load_network", lambda model_dir, spec: FailsOnThirdBatch())
    out = scene.parent / "out" / "prediction.tif"
    with pytest.raises(error, match="stop"):
        infer_geotiff(
            models["segment"], scene, out, tile=32, batch_size=2, num_workers=workers, cog=cog
        )
    assert list(out.parent.iterdir()) == []


def test_a_band_count_mismatch_fails_before_any_work(
    models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_geotiff(tmp_path / "four_bands.tif", scene_array(bands=4), nodata=0)
    monkeypatch.setattr(streaming, "load_network", lambda model_dir, spec: pytest.fail("loaded"))
    out = tmp_path / "out" / "prediction.tif"
    with pytest.raises(DomainSSLError, match=r"four_bands.tif has 4 bands .* expects 3 \(B1"):
        infer_geotiff(models["segment"], source, out)
    assert not out.parent.exists()


def test_embedding_map_has_feature_bands_and_a_pca_picture(models: dict, scene: Path) -> None:
    out = scene.parent / "embedding.tif"
    summary = infer_geotiff(models["embed"], scene, out, num_workers=0, cog=True)
    pca_out = scene.parent / "embedding_pca.tif"
    assert summary.outputs == [out, pca_out] and summary.task == "embed"
    embedding, profile = read(out)
    with rasterio.open(scene) as src:
        assert profile["transform"] == src.transform * Affine.scale(32)
        assert profile["crs"] == src.crs
    assert embedding.shape == (512, 10, 4) and profile["dtype"] == "float32"
    cells = cell_validity(~INVALID, 32)
    assert np.isnan(embedding[:, ~cells]).all() and np.isfinite(embedding[:, cells]).all()
    backbone, meta = load_backbone(models["embed"])
    crop = np.zeros((1, 3, 32, 32), np.float32)
    crop[..., :4] = scene_array()[:, 64:96, 96:100]  # the last column is 4 px wide
    with torch.no_grad():
        expected = backbone(preprocess(meta, torch.from_numpy(crop)))[0].numpy()
    np.testing.assert_allclose(embedding[:, 2, 3], expected, atol=1e-4)
    picture, pca_profile = read(pca_out)
    assert picture.shape == (3, 10, 4) and pca_profile["dtype"] == "uint8"
    assert pca_profile["transform"] == profile["transform"] and pca_profile["nodata"] == 0
    assert (picture[:, ~cells] == 0).all() and (picture[:, cells] > 0).all()
    assert picture[:, cells].std(axis=1).min() > 10  # the components vary across the map
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_infer_cli_writes_a_georeferenced_prediction(models: dict, scene: Path) -> None:
    out = scene.parent / "cli" / "prediction.tif"
    args = ["infer", str(models["segment"]), str(scene), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--accelerator", "cpu", "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    assert "segment:" in result.output and "Mpx/s" in result.output
    labels, profile = read(out)
    with rasterio.open(scene) as source:
        assert profile["crs"] == source.crs and profile["transform"] == source.transform
    assert labels.shape[1:] == scene_array().shape[1:]
    bad = CliRunner().invoke(app, [*args, "--precision", "bf16"])
    assert bad.exit_code == 2 and "--precision must be" in bad.output


class FailsAtCall(PixelModel):
    """The per-pixel model, raising KeyboardInterrupt at its ``stop``-th forward pass."""

    def __init__(self, stop: int) -> None:
        super().__init__()
        self.stop, self.calls = stop, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt("stop")
        return super().forward(images)


@pytest.mark.parametrize("probabilities", [False, True])
def test_a_resumed_run_skips_finished_rows_and_equals_an_uninterrupted_one(
    models: dict, scene: Path, monkeypatch: pytest.MonkeyPatch, probabilities: bool
) -> None:
    monkeypatch.setattr(partial_module, "FLUSH_INTERVAL_S", 0.0)
    run = partial(infer_geotiff, tile=32, overlap=8, batch_size=2, num_workers=0)
    whole = scene.parent / "whole.tif"
    monkeypatch.setattr(streaming, "load_network", lambda model_dir, spec: PixelModel())
    full = run(models["segment"], scene, whole, probabilities=probabilities)
    out = scene.parent / "out" / "prediction.tif"
    # 13 x 4 tiles, 2 per batch, batches without a valid pixel skipped: call 20 ends tile
    # row 10, whose rows reach 264, so rows 0..255 are flushed before call 21 stops the run
    monkeypatch.setattr(streaming, "load_network", lambda model_dir, spec: FailsAtCall(21))
    with pytest.raises(KeyboardInterrupt):
        run(models["segment"], scene, out, probabilities=probabilities)
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [
        ".prediction.tif.partial",
        ".prediction.tif.progress.json",
    ]
    monkeypatch.setattr(streaming, "load_network", lambda model_dir, spec: PixelModel())
    resumed = run(models["segment"], scene, out, probabilities=probabilities, resume=True)
    assert list(out.parent.iterdir()) == [out]
    # rows 0..255 were on disk: tile rows 10..12 (those reaching past row 255) run again,
    # less their tiles in column 3, inside the nodata block
    assert (full.tiles_run, resumed.tiles_run) == (44, 9)
    np.testing.assert_array_equal(read(out)[0], read(whole)[0])


@pytest.mark.parametrize(("overlap", "precision"), [(4, "32-true"), (None, "bf16-mixed")])
def test_resume_ignores_a_partial_output_of_other_settings(
    models: dict, scene: Path, monkeypatch: pytest.MonkeyPatch, overlap: int | None, precision: str
) -> None:
    monkeypatch.setattr(partial_module, "FLUSH_INTERVAL_S", 0.0)
    out = scene.parent / "prediction.tif"
    monkeypatch.setattr(streaming, "load_network", lambda model_dir, spec: FailsAtCall(21))
    with pytest.raises(KeyboardInterrupt):
        infer_geotiff(models["segment"], scene, out, tile=32, batch_size=2, num_workers=0)
    monkeypatch.setattr(streaming, "load_network", lambda model_dir, spec: PixelModel())
    other = partial(infer_geotiff, tile=32, overlap=overlap, batch_size=2, num_workers=0,
                    precision=precision)  # fmt: skip
    resumed = other(models["segment"], scene, out, resume=True)
    fresh = other(models["segment"], scene, scene.parent / "fresh.tif")
    assert resumed.tiles_run == fresh.tiles_run  # started afresh: a setting differs
    np.testing.assert_array_equal(read(out)[0], read(scene.parent / "fresh.tif")[0])


def test_a_resumed_embedding_map_and_picture_equal_an_uninterrupted_run(
    models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partial_module, "FLUSH_INTERVAL_S", 0.0)
    array = np.random.default_rng(1).integers(100, 3000, (3, 1100, 12)).astype(np.uint16)
    source = write_geotiff(tmp_path / "tall.tif", array)
    run = partial(infer_geotiff, tile=4, batch_size=64, num_workers=0)
    whole = tmp_path / "whole.tif"
    run(models["embed"], source, whole)
    backbone = for_inference(load_backbone(models["embed"])[0])  # as load_network prepares it

    class FailsLate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.calls = backbone, 0

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 13:  # 12 x 64 tiles = 256 cell rows of 3: the last batch stops
                raise KeyboardInterrupt("stop")
            return self.backbone(images)

    monkeypatch.setattr(streaming, "load_network", lambda model_dir, spec: FailsLate())
    out = tmp_path / "out" / "embedding.tif"
    with pytest.raises(KeyboardInterrupt):
        run(models["embed"], source, out)
    monkeypatch.undo()
    resumed = run(models["embed"], source, out, resume=True)
    assert resumed.tiles_run == (275 - 256) * 3
    np.testing.assert_array_equal(read(out)[0], read(whole)[0])
    pictures = out.with_name("embedding_pca.tif"), whole.with_name("whole_pca.tif")
    np.testing.assert_array_equal(read(pictures[0])[0], read(pictures[1])[0])
