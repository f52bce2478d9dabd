"""`domainssl pretrain --domain pathology` end to end on generated slides."""

import json
from pathlib import Path

from conftest import FAST
from fixtures import write_slide
from typer.testing import CliRunner

from domainssl.cli import app

runner = CliRunner()
TISSUE = [(256, 256, 1792, 1280)]


def test_pathology_run_on_a_slide_folder(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    write_slide(slides / "a.tif", tissue=TISSUE)
    write_slide(slides / "b.tif", tissue=TISSUE, seed=1)
    args = [
        "pretrain",
        "--domain",
        "pathology",
        "--data",
        str(slides),
        "--out",
        str(tmp_path),
        "--name",
        "p",
        "--magnification",
        "10",  # = 1.0 µm/px
        *[f"--set={s}" for s in FAST],
        "--set=data.samples_per_epoch=16",
        "--set=data.stain_norm=macenko",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "p"
    fitted = json.loads((run / "stain_norm.json").read_text())
    assert fitted["method"] == "macenko" and fitted["fitted_on"] == "the data set"
    assert len(list((run / "tissue_grids").glob("*.json"))) == 2
    grid = json.loads(next((run / "tissue_grids").glob("*.json")).read_text())
    assert grid["mpp"] == 1.0 and grid["slide_mpp"] == 0.25
    meta = json.loads((run / "backbone.json").read_text())
    assert meta["domain"] == "pathology" and meta["band_names"] == ["red", "green", "blue"]
    assert meta["mpp"] == 1.0 and meta["stain_norm"] == fitted
    assert (
        "macenko stain normalization" in json.loads((run / "band_stats.json").read_text())["source"]
    )


def test_mpp_and_magnification_together_is_an_error() -> None:
    result = runner.invoke(
        app, ["pretrain", "--domain", "pathology", "--mpp", "0.5", "--magnification", "20"]
    )
    assert result.exit_code == 2 and "either --mpp or --magnification" in result.output


def test_tissue_free_slides_stop_with_exit_2(tmp_path: Path) -> None:
    write_slide(tmp_path / "slides" / "blank.tif", tissue=[])
    args = [
        "pretrain",
        "--domain",
        "pathology",
        "--data",
        str(tmp_path / "slides"),
        "--out",
        str(tmp_path / "runs"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "No usable slide" in result.output and "no tissue found" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_pathology_views_png_from_the_embedded_demo(tmp_path: Path) -> None:
    out = tmp_path / "views.png"
    args = [
        "views",
        "--domain",
        "pathology",
        "--out",
        str(out),
        "--samples",
        "2",
        "--count",
        "2",
        "--set=data.stats_samples=16",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
