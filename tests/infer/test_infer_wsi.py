"""`domainssl infer` on whole slides: tissue-only tiles, the pyramidal heatmap OpenSlide
opens at the right resolution, CSV / GeoJSON / thumbnail outputs against brute-force
references, atomic outputs, and the checks that run before any work."""

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
import rasterio
import tifffile
import torch
from fixtures import write_geotiff, write_infer_models, write_slide
from PIL import Image
from rasterio.transform import from_origin
from torch import nn

from domainssl.data.pathology import SlideGrid, read_patch
from domainssl.errors import DomainSSLError
from domainssl.export import preprocess, read_meta
from domainssl.infer.wsi import heatmap
from domainssl.infer.wsi import infer as wsi
from domainssl.infer.wsi.heatmap import CELL, PALETTE
from domainssl.infer.wsi.infer import infer_slide, is_slide_source
from domainssl.transfer.classification.model import load_classifier
from domainssl.transfer.segmentation.model import load_segmenter

BOXES = [(256, 256, 1024, 768), (1280, 896, 1792, 1280)]  # tissue, level-0 px
SLIDE_MPP, MPP, TILE = 0.25, 0.5, 32
STEP = round(TILE * MPP / SLIDE_MPP)  # 64 level-0 px per tile
ROWS, COLS = 1536 // STEP, 2048 // STEP


def tissue_cells() -> set[tuple[int, int]]:
    """Level-0 (x, y) of the grid cells that lie inside a tissue box."""
    return {
        (x, y)
        for x0, y0, x1, y1 in BOXES
        for x in range(x0, x1 - STEP + 1, STEP)
        for y in range(y0, y1 - STEP + 1, STEP)
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_infer_models(tmp_path_factory.mktemp("models"), 3)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slide") / "slide.tif", tissue=BOXES)


def run(model: Path, slide: Path, out: Path, **options: Any) -> dict[str, Path]:
    """Infer in-process at ``MPP`` / ``TILE``; the side outputs by suffix."""
    infer_slide(model, slide, out, tile=TILE, mpp=MPP, num_workers=0, **options)
    return {suffix: out.with_name(out.stem + suffix) for suffix in wsi.SUFFIXES}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def probabilities(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r[f"p_class_{k}"]) for k in range(3)] for r in rows])


def test_heatmap_covers_exactly_the_tissue_tiles(models: dict, slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "heatmap.tif"
    files = run(models["classify"], slide, out)
    rows = read_csv(files["_tiles.csv"])
    assert {(int(r["x"]), int(r["y"])) for r in rows} == tissue_cells()
    assert len(rows) == len(tissue_cells())
    assert all(int(r["width"]) == int(r["height"]) == STEP for r in rows)
    assert all(r["class"] == f"class_{probabilities([r]).argmax()}" for r in rows)
    with tifffile.TiffFile(out) as tif:
        base, half = tif.pages[0].asarray(), tif.pages[1].asarray()
    assert base.shape == (ROWS * CELL, COLS * CELL, 3)
    colours = {(int(r["x"]), int(r["y"])): r for r in rows}
    for row in range(ROWS):
        for col in range(COLS):
            block = base[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
            tile = colours.get((col * STEP, row * STEP))
            if tile is None:
                assert (block == 255).all()
                continue
            p = probabilities([tile])[0]
            expected = PALETTE[p.argmax()] * p.max()  # argmax colour scaled by confidence
            assert (np.abs(block.astype(float) - expected) <= 0.51).all()
    assert np.array_equal(half, base[::2, ::2])  # levels repeat cells: exact subsampling


def test_openslide_opens_the_heatmap_at_the_tile_resolution(
    models: dict, slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "heatmap.tif"
    run(models["segment"], slide, out)
    assert openslide.OpenSlide.detect_format(str(out)) == "generic-tiff"
    with openslide.OpenSlide(str(out)) as heat:
        assert heat.level_count >= 2
        assert heat.dimensions == (COLS * CELL, ROWS * CELL)
        expected_mpp = SLIDE_MPP * STEP / CELL  # one CELL block spans one tile
        assert float(heat.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(expected_mpp)
        assert float(heat.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(expected_mpp)
        x0, y0 = BOXES[0][:2]
        inside = heat.read_region((x0 * CELL // STEP, y0 * CELL // STEP), 0, (4, 4))
        outside = heat.read_region((0, 0), 1, (4, 4))
        assert (np.asarray(inside)[..., :3] < 255).any(axis=-1).all()
        assert (np.asarray(outside)[..., :3] == 255).all()
    assert is_slide_source(out)


def test_geojson_holds_one_qupath_detection_per_tile(
    models: dict, slide: Path, tmp_path: Path
) -> None:
    files = run(models["classify"], slide, tmp_path / "heatmap.tif")
    rows = read_csv(files["_tiles.csv"])
    collection = json.loads(files["_tiles.geojson"].read_text())
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == len(rows)
    for feature, row in zip(collection["features"], rows, strict=True):
        x, y, size = int(row["x"]), int(row["y"]), int(row["width"])
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        assert feature["geometry"] == {"type": "Polygon", "coordinates": [ring]}
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        best = int(row["class"].split("_")[1])
        assert properties["classification"] == {
            "name": row["class"],
            "color": PALETTE[best].tolist(),
        }
        measured = [properties["measurements"][f"p_class_{k}"] for k in range(3)]
        np.testing.assert_allclose(measured, probabilities([row])[0], rtol=1e-6)


def test_thumbnail_blends_the_heatmap_over_tissue_only(
    models: dict, slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "heatmap.tif"
    files = run(models["classify"], slide, out)
    picture = np.asarray(Image.open(files["_thumbnail.png"])).astype(float)
    with openslide.OpenSlide(str(slide)) as source:
        raw = np.asarray(source.get_thumbnail((1024, 1024)).convert("RGB")).astype(float)
    assert picture.shape == raw.shape == (768, 1024, 3)
    scale = 1024 / 2048
    tissue = np.zeros(raw.shape[:2], bool)
    for x0, y0, x1, y1 in BOXES:
        tissue[int(y0 * scale) : int(y1 * scale), int(x0 * scale) : int(x1 * scale)] = True
    assert np.array_equal(picture[~tissue], raw[~tissue])
    base = tifffile.imread(out, key=0).astype(float)
    centres = (2 * np.arange(1024) + 1) // STEP * CELL  # thumbnail px -> its cell's block
    heat = base[centres[:768, None], centres[None, :]]  # (768, 1024, 3)
    blend = 0.5 * raw[tissue] + 0.5 * heat[tissue]
    assert np.abs(picture[tissue] - blend).max() <= 0.5


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_csv_matches_the_model_run_on_each_tile(
    models: dict, slide: Path, tmp_path: Path, task: str
) -> None:
    out = tmp_path / "heatmap.tif"
    infer_slide(models[task], slide, out, tile=TILE, mpp=MPP, batch_size=5, num_workers=2)
    rows = read_csv(out.with_name("heatmap_tiles.csv"))
    grid = SlideGrid(str(slide), SLIDE_MPP, TILE, MPP, 0.5, [])
    with openslide.OpenSlide(str(slide)) as source:
        patches = [read_patch(source, grid, int(r["x"]), int(r["y"])) for r in rows]
    images = torch.from_numpy(np.stack(patches))  # (N, 3, T, T) uint8
    with torch.no_grad():
        if task == "classify":
            classifier, meta = load_classifier(models[task])[:2]
            expected = classifier.scores(preprocess(meta, images))
        else:
            segmenter, meta, _ = load_segmenter(models[task])
            expected = segmenter(preprocess(meta, images)).softmax(1).mean(dim=(2, 3))
    np.testing.assert_allclose(probabilities(rows), expected.numpy(), atol=1e-5)


def test_constant_model_gives_its_class_on_all_tissue(
    models: dict, slide: Path, tmp_path: Path
) -> None:
    rows = read_csv(run(models["constant"], slide, tmp_path / "heatmap.tif")["_tiles.csv"])
    assert len(rows) == len(tissue_cells())
    assert {r["class"] for r in rows} == {"class_1"}
    top = math.exp(2) / (math.exp(2) + 2)  # logits (0, 2, 0) everywhere
    np.testing.assert_allclose(probabilities(rows)[:, 1], top, atol=1e-5)


def test_embeddings_are_written_with_a_pca_heatmap(
    models: dict, slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "heatmap.tif"
    files = run(models["embed"], slide, out)
    rows = read_csv(files["_tiles.csv"])
    dim = read_meta(models["embed"]).feature_dim
    assert list(rows[0]) == ["x", "y", "width", "height"] + [f"embedding_{i}" for i in range(dim)]
    assert len(rows) == len(tissue_cells())
    base = tifffile.imread(out, key=0)
    x, y = BOXES[0][:2]
    assert (base[y // STEP * CELL, x // STEP * CELL] < 255).any()
    features = json.loads(files["_tiles.geojson"].read_text())["features"]
    assert all(len(f["properties"]["color"]) == 3 for f in features)


class Interrupted(nn.Module):
    """A network whose second batch is interrupted (Ctrl-C)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return torch.full((len(images), 3), 1 / 3)


def test_interrupts_leave_no_file(
    models: dict, slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "out"
    monkeypatch.setattr(wsi, "load_network", lambda model_dir, spec: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        infer_slide(models["classify"], slide, folder / "h.tif", tile=TILE, mpp=MPP)
    assert not folder.exists() or not list(folder.iterdir())
    monkeypatch.undo()

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt  # the last output: the others are written by now

    monkeypatch.setattr(wsi, "write_thumbnail", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(models["classify"], slide, folder / "h.tif")
    assert list(folder.iterdir()) == []


def test_band_mismatch_fails_before_any_work(
    models: dict, slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Path(shutil.copytree(models["segment"], tmp_path / "one_band"))
    info = json.loads((model / "model.json").read_text())
    info["backbone"].update(in_chans=1, band_names=["B1"], mean=[0.0], std=[1.0])
    (model / "model.json").write_text(json.dumps(info))

    def no_work(*args: object) -> None:
        raise AssertionError("work started before the band check")

    monkeypatch.setattr(wsi, "build_grid", no_work)
    monkeypatch.setattr(wsi, "load_network", no_work)
    with pytest.raises(DomainSSLError, match="expects 1 bands.*RGB"):
        infer_slide(model, slide, tmp_path / "h.tif", mpp=MPP)


def test_resolution_comes_from_the_model_or_mpp(models: dict, slide: Path, tmp_path: Path) -> None:
    with pytest.raises(DomainSSLError, match="--mpp"):
        infer_slide(models["classify"], slide, tmp_path / "h.tif", tile=TILE)
    model = Path(shutil.copytree(models["classify"], tmp_path / "at_1mpp"))
    info = json.loads((model / "model.json").read_text())
    info["backbone"]["mpp"] = 1.0
    (model / "model.json").write_text(json.dumps(info))
    infer_slide(model, slide, tmp_path / "h.tif", tile=TILE, num_workers=0)
    assert read_csv(tmp_path / "h_tiles.csv")[0]["width"] == str(TILE * 4)  # 1.0 / 0.25
    with pytest.warns(UserWarning, match="pretrained at 1"):
        infer_slide(model, slide, tmp_path / "h.tif", tile=TILE, mpp=MPP, num_workers=0)
    assert read_csv(tmp_path / "h_tiles.csv")[0]["width"] == str(STEP)


def test_slide_without_tissue_or_resolution_fails_clearly(models: dict, tmp_path: Path) -> None:
    blank = write_slide(tmp_path / "blank.tif", tissue=[])
    with pytest.raises(DomainSSLError, match=r"No tissue found in .*blank\.tif.*lower it"):
        run(models["classify"], blank, tmp_path / "h.tif")
    bare = write_slide(tmp_path / "bare.tif", mpp=None, tissue=BOXES)
    with pytest.raises(DomainSSLError, match=r"bare\.tif has no resolution.*--slide-mpp"):
        run(models["classify"], bare, tmp_path / "h.tif")
    rows = read_csv(run(models["classify"], bare, tmp_path / "h.tif", slide_mpp=0.25)["_tiles.csv"])
    assert {(int(r["x"]), int(r["y"])) for r in rows} == tissue_cells()
    assert not any(tmp_path.glob(".*.tmp"))


def test_levels_halve_cells_once_below_one_pixel_each() -> None:
    cells = np.random.default_rng(0).integers(0, 256, (301, 600, 3)).astype(np.uint8)
    levels = list(heatmap._levels(cells))
    sizes = [(s.shape[0] * r, s.shape[1] * r) for s, r in levels]
    assert sizes == [(301 * 16 // 2**k, 600 * 16 // 2**k) for k in range(5)] + [(151, 300)]
    padded = np.pad(cells, ((0, 1), (0, 0), (0, 0)), constant_values=255).astype(float)
    means = (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]) / 4
    assert np.abs(levels[-1][0] - means).max() <= 0.5


def write_plain_tiff(path: Path, bands: int, dtype: str) -> Path:
    """A tiled, single-level, non-georeferenced TIFF (a plain scan, or a raw band stack)."""
    image = np.zeros((512, 512, bands), dtype=dtype)
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb" if bands == 3 else None)
    return path


def test_is_slide_source_tells_slides_from_geotiffs(slide: Path, tmp_path: Path) -> None:
    striped = write_geotiff(tmp_path / "scene.tif", np.zeros((3, 64, 64), np.uint8))
    tiled = tmp_path / "tiled_scene.tif"
    with rasterio.open(
        tiled, "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8",
        crs="EPSG:32632", transform=from_origin(0, 0, 10, 10), tiled=True,
    ) as dst:  # fmt: skip
        dst.write(np.zeros((3, 512, 512), np.uint8))
    assert openslide.OpenSlide.detect_format(str(tiled)) == "generic-tiff"  # the ambiguity
    assert is_slide_source(slide)
    assert is_slide_source(write_plain_tiff(tmp_path / "scan.tif", 3, "uint8"))
    assert not is_slide_source(write_plain_tiff(tmp_path / "stack.tif", 4, "uint16"))
    assert not is_slide_source(striped)
    assert not is_slide_source(tiled)
    assert not is_slide_source(tmp_path / "missing.svs")


def test_infer_cli_sends_a_slide_to_the_heatmap_and_refuses_geotiff_only_options(
    models: dict, slide: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from domainssl.cli import app

    out = tmp_path / "cli" / "heatmap.tif"
    args = ["infer", str(models["classify"]), str(slide), "--out", str(out), "--mpp", str(MPP)]
    options = ["--tile", str(TILE), "--num-workers", "0", "--accelerator", "cpu"]
    result = CliRunner().invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output
    assert f"classify: {len(tissue_cells())} tiles" in result.output
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["heatmap.tif", *(f"heatmap{suffix}" for suffix in wsi.SUFFIXES)]
    )
    refused = CliRunner().invoke(app, [*args, *options, "--probabilities"])
    assert refused.exit_code == 2 and "apply to GeoTIFFs only" in refused.output


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--tile", "0", "--tile must be a positive"),
        ("--batch-size", "0", "--batch-size must be at least 1"),
        ("--num-workers", "-1", "--num-workers must be 0 or more"),
        ("--slide-mpp", "0", "--slide-mpp must be a positive"),
        ("--tissue-threshold", "2", "from 0 to 1"),
    ],
)
def test_infer_cli_refuses_an_impossible_tiling_option_with_exit_2_and_writes_nothing(
    models: dict, slide: Path, tmp_path: Path, option: str, value: str, named: str
) -> None:
    from typer.testing import CliRunner

    from domainssl.cli import app

    args = ["infer", str(models["classify"]), str(slide), "--out", str(tmp_path / "h.tif"),
            "--accelerator", "cpu", option, value]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and named in result.output, result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())
