"""Hostile and broken inputs through the real entry points: exit code 2 and one clear
message (file, problem, fix), or, in folders, bad files skipped and listed unless strict."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import FAST
from fixtures import write_chip_folder, write_infer_models
from hostile_fixtures import (
    PYTHON_TAG_YAML,
    WRONG_TYPES_YAML,
    complex_geotiff,
    constant_band_chips,
    exif_rotated_jpeg,
    fake_slide,
    huge_declared_tiff,
    mixed_folder,
    nodata_scene,
    non_utf8_folder,
    nonfinite_scene,
    one_pixel_image,
    slide_without_mpp,
    symlink_loop_folder,
    truncated_geotiff,
)
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.data.folder import ChipFolder
from domainssl.data.imageio import read_image
from domainssl.data.stats import RunningBandStats

SCENE = ["data.sample_size=32", "data.samples_per_epoch=16", "data.stats_samples=16"]


def pretrain(tmp_path: Path, data: Path, *extra: str, domain: str = "eo") -> tuple[int, str]:
    args = ["pretrain", "--domain", domain, "--method", "simclr", "--data", str(data)]
    args += ["--out", str(tmp_path / "runs")]
    for item in [*FAST, *SCENE]:
        args += ["--set", item]
    result = CliRunner().invoke(app, [*args, *extra])
    return result.exit_code, result.output


def assert_clear_error(code: int, output: str, *phrases: str) -> None:
    """Exit code 2, one ``Error:`` line, no traceback, and every phrase in the message."""
    assert code == 2, output
    assert output.count("Error:") == 1 and "Traceback" not in output, output
    for phrase in phrases:
        assert phrase in output, (phrase, output)


@pytest.mark.parametrize(
    ("make", "phrases"),
    [
        (truncated_geotiff, ["corrupt or truncated", "re-export"]),
        (complex_geotiff, ["complex64 are not supported", "convert the raster"]),
        (nodata_scene, ["nodata or NaN/inf", "data.max_nodata_fraction"]),
        (nonfinite_scene, ["nodata or NaN/inf", "fill the NaN/inf"]),
        (one_pixel_image, ["is 1x1 px", "lower data.sample_size"]),
        (huge_declared_tiff, ["corrupt or truncated"]),
    ],
)
def test_a_broken_scene_gives_one_clear_error(
    tmp_path: Path, make: Callable[[Path], Path], phrases: list[str]
) -> None:
    scene = make(tmp_path / "scene.tif")
    code, output = pretrain(tmp_path, scene)
    assert_clear_error(code, output, str(scene), *phrases)


def test_a_huge_declared_chip_is_refused_before_reading(tmp_path: Path) -> None:
    folder = tmp_path / "chips"
    huge = huge_declared_tiff(folder / "huge.tif")
    code, output = pretrain(tmp_path, folder)  # the only file is bad: nothing to skip to
    assert_clear_error(code, output, str(huge), "1000000x1000000", "data.kind=scenes")


def test_bad_chips_are_skipped_and_listed_unless_strict(tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "mixed", bad=2)
    with pytest.warns(UserWarning, match="2 of 10 images skipped") as caught:
        chips = ChipFolder(folder, size=32)
    assert len(chips) == 8 and len(chips.skipped) == 2
    assert chips.labels == [int(f.parent.name[-1]) for f in chips.files]
    message = str(caught[0].message)
    assert all(f"bad_{i}.tif" in message for i in range(2))
    with pytest.warns(UserWarning, match="2 of 10 images skipped"):
        code, output = pretrain(tmp_path, folder, "--name", "skips")
    assert code == 0, output
    listed = (tmp_path / "runs" / "skips" / "skipped_inputs.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in listed] == [
        str(folder / "class_0" / f"bad_{i}.tif") for i in range(2)
    ]
    end = output[output.index("Run folder:") :]  # the summary after training lists them again
    assert "2 unreadable inputs were skipped" in end and "bad_1.tif" in end
    code, output = pretrain(tmp_path, folder, "--strict")
    assert_clear_error(code, output, "bad_0.tif", "corrupt or truncated", "re-export")
    code, output = pretrain(tmp_path, folder, "--set", "data.strict=true")
    assert_clear_error(code, output, "bad_0.tif")


def test_zero_variance_and_nonfinite_bands_give_finite_stats() -> None:
    images = torch.rand(4, 3, 8, 8) * 100  # (B, C, H, W)
    images[:, 1] = 7.0
    images[:, 2, :4] = float("nan")
    images[:, 2, 4:6] = float("inf")
    running = RunningBandStats(3)
    running.update(images)
    with pytest.warns(UserWarning, match=r"Bands \[1\]"):
        stats = running.result("x")
    finite = images[:, 2, 6:].double()
    assert stats.mean[1] == pytest.approx(7.0) and stats.std[1] == 1.0
    assert stats.mean[2] == pytest.approx(float(finite.mean()))
    assert stats.std[2] == pytest.approx(float(finite.std(unbiased=False)), rel=1e-6)
    all_nan = RunningBandStats(1)
    all_nan.update(torch.full((2, 1, 4, 4), float("nan")))
    with pytest.warns(UserWarning):
        empty = all_nan.result("y")
    assert np.isfinite(empty.mean + empty.std).all() and empty.std == [1.0]


def test_a_constant_band_pretrains_with_unit_std(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"Bands \[1\] .* constant"):
        code, output = pretrain(tmp_path, constant_band_chips(tmp_path / "const"))
    assert code == 0, output


def test_slides_openslide_cannot_open_or_without_resolution(tmp_path: Path) -> None:
    bad = fake_slide(tmp_path / "bad" / "slide.svs")
    code, output = pretrain(tmp_path, bad, domain="pathology")
    assert_clear_error(code, output, str(bad), "OpenSlide does not recognise", "Check the files")
    bare = slide_without_mpp(tmp_path / "bare" / "slide.tif")
    code, output = pretrain(tmp_path, bare, "--set", "data.kind=slides", domain="pathology")
    assert_clear_error(code, output, str(bare), "no resolution metadata", "data.slide_mpp=")


def test_exif_orientation_is_applied_to_jpeg(tmp_path: Path) -> None:
    image = read_image(exif_rotated_jpeg(tmp_path / "rotated.jpg"))
    assert image.array.shape == (3, 40, 20)  # stored 40 wide x 20 high, displayed upright


def test_symlink_loop_is_not_followed(tmp_path: Path) -> None:
    folder = symlink_loop_folder(tmp_path / "loop")
    assert len(ChipFolder(folder, size=32)) == 6
    code, output = pretrain(tmp_path, folder)
    assert code == 0, output


def test_non_utf8_file_names_are_read(tmp_path: Path) -> None:
    folder = non_utf8_folder(tmp_path / "latin1")
    chips = ChipFolder(folder, size=32)
    assert len(chips) == 6 and not chips.skipped
    assert any(os.fsencode(f).endswith(b"caf\xe9.tif") for f in chips.files)
    code, output = pretrain(tmp_path, folder)
    assert code == 0, output


def test_config_with_wrong_types_and_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(WRONG_TYPES_YAML)
    result = CliRunner().invoke(app, ["pretrain", "--config", str(config)])
    assert_clear_error(
        result.exit_code,
        result.output,
        str(config),
        "data.batch_size: Input should be a valid integer",
        "unknown key 'data.colour'. Valid keys here:",
        "trainer.epochs",
    )
    result = CliRunner().invoke(app, ["pretrain", "--set", "data.batch_size=many"])
    assert_clear_error(result.exit_code, result.output, "data.batch_size")


def test_yaml_python_tags_are_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(PYTHON_TAG_YAML.format(marker=marker))
    result = CliRunner().invoke(app, ["pretrain", "--config", str(config)])
    assert_clear_error(result.exit_code, result.output, str(config), "no object tags")
    result = CliRunner().invoke(app, ["pretrain", "--set", "data.path=!!python/name:os.system"])
    assert_clear_error(result.exit_code, result.output, "not valid YAML")
    assert not marker.exists()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_infer_models(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("make", [truncated_geotiff, complex_geotiff])
def test_infer_on_a_broken_scene(
    models: dict[str, Path], tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    scene = make(tmp_path / "scene.tif")
    out = tmp_path / "prediction.tif"
    args = ["infer", str(models["segment"]), str(scene), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--accelerator", "cpu", "--num-workers", "0"])
    assert_clear_error(result.exit_code, result.output, str(scene))
    assert not out.exists()


def test_embed_skips_bad_chips(models: dict[str, Path], tmp_path: Path) -> None:
    folder = write_chip_folder(tmp_path / "chips", per_class=2, bands=3)
    truncated_geotiff(folder / "class_0" / "bad.tif")
    out = tmp_path / "emb.parquet"
    args = ["embed", str(models["embed"]), "--data", str(folder), "--out", str(out)]
    with pytest.warns(UserWarning, match="1 of 5 images skipped"):
        result = CliRunner().invoke(app, [*args, "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    paths = pq.read_table(out).to_pydict()["path"]
    assert len(paths) == 4 and not any("bad.tif" in p for p in paths)


def test_transfer_skips_bad_chips_and_keeps_labels_aligned(
    models: dict[str, Path], tmp_path: Path
) -> None:
    folder = write_chip_folder(tmp_path / "labeled", per_class=5, bands=3)
    truncated_geotiff(folder / "class_1" / "bad.tif")
    args = ["transfer", str(models["embed"]), "--data", str(folder), "--protocol", "knn"]
    with pytest.warns(UserWarning, match="1 of 11 images skipped"):
        result = CliRunner().invoke(app, [*args, "--accelerator", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "metrics.json").is_file()


def test_a_scene_with_a_non_utf8_name_is_a_clear_error(tmp_path: Path) -> None:
    scene = nodata_scene(tmp_path / "scene.tif")
    renamed = os.path.join(os.fsencode(tmp_path), b"sc\xe8ne.tif")
    os.rename(os.fsencode(scene), renamed)
    code, output = pretrain(tmp_path, Path(os.fsdecode(renamed)))
    assert_clear_error(code, output, "not valid UTF-8", "rename it")


def test_infer_on_broken_slides(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "heatmap.tif"
    base = ["--out", str(out), "--accelerator", "cpu", "--num-workers", "0"]
    bad = fake_slide(tmp_path / "bad.svs")
    result = CliRunner().invoke(app, ["infer", str(models["classify"]), str(bad), *base])
    assert_clear_error(result.exit_code, result.output, str(bad), "corrupt or not a GeoTIFF")
    bare = slide_without_mpp(tmp_path / "bare.tif")
    args = ["infer", str(models["classify"]), str(bare), "--mpp", "0.5", *base]
    result = CliRunner().invoke(app, args)
    assert_clear_error(result.exit_code, result.output, str(bare), "--slide-mpp")
    assert not out.exists()
