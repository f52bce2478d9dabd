"""Whole-slide loading: tissue detection, patch grid at a target resolution, bad slides."""

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import openslide
import pytest
import torch
from fixtures import TISSUE_RGB, write_slide

from domainssl.data.pathology import (
    SlidePatches,
    best_level,
    build_grid,
    cached_grid,
    list_slides,
    open_slide_grids,
    read_patch,
)
from domainssl.data.tissue import close_then_open, saturation, tissue_mask
from domainssl.errors import DomainSSLError

# level 0 at 0.25 µm/px; a 1024 x 512 px tissue block = 256 x 128 µm
TISSUE = [(512, 512, 1536, 1024)]


def test_tissue_mask_finds_known_area() -> None:
    image = np.full((200, 300, 3), 240, np.uint8)
    image[50:150, 100:250] = TISSUE_RGB
    mask = tissue_mask(image)
    assert abs(int(mask.sum()) - 100 * 150) / (100 * 150) < 0.05


def test_saturation_matches_the_hsv_formula_in_float() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[:3] = 0  # black: max 0
    image[3:6] = 255  # white
    values = image.astype(np.float64)
    high, low = values.max(axis=2), values.min(axis=2)
    expected = np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0)
    result = saturation(image)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_close_then_open_equals_scipy_with_the_background_border(share: float) -> None:
    from scipy import ndimage
    from skimage.morphology import disk

    mask = np.random.default_rng(1).random((61, 47)) < share  # dense: the border matters
    expected = ndimage.binary_opening(ndimage.binary_closing(mask, disk(2)), disk(1))
    np.testing.assert_array_equal(close_then_open(mask), expected)


def test_blank_slide_has_no_tissue() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(240 + rng.normal(0, 3, (200, 200, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass).any()


def test_grid_keeps_tissue_patches_only(tmp_path: Path) -> None:
    slide = write_slide(tmp_path / "s.tif", tissue=TISSUE)
    grid = build_grid(slide, patch_size=64, mpp=1.0, tissue_threshold=0.5, slide_mpp=None)
    assert grid.slide_mpp == pytest.approx(0.25) and grid.level0_size == 256
    # the tissue block is exactly 4 x 2 patches of 256 level-0 px
    assert sorted(grid.coords) == [(x, y) for x in (512, 768, 1024, 1280) for y in (512, 768)]


def test_patch_has_the_right_physical_size(tmp_path: Path) -> None:
    """A 128 px patch at 0.5 µm/px spans 64 µm = 256 level-0 px. Placed at x = 1408, it
    overlaps the tissue (which ends at x = 1536) by 128 level-0 px = 64 patch columns."""
    slide_path = write_slide(tmp_path / "s.tif", tissue=TISSUE)
    grid = build_grid(slide_path, patch_size=128, mpp=0.5, tissue_threshold=0.1, slide_mpp=None)
    with openslide.OpenSlide(str(slide_path)) as slide:
        assert slide.get_best_level_for_downsample(grid.level0_size / 128) == 1
        patch = read_patch(slide, grid, 1408, 512)
    assert patch.shape == (3, 128, 128)
    tissue_columns = (saturation(patch.transpose(1, 2, 0)) > 0.3).mean(axis=0) > 0.5
    assert abs(int(tissue_columns.sum()) - 64) <= 2
    assert tissue_columns[:60].all() and not tissue_columns[68:].any()


def test_dataset_random_and_grid_modes(tmp_path: Path) -> None:
    slide = write_slide(tmp_path / "s.tif", tissue=TISSUE)
    grid = build_grid(slide, patch_size=32, mpp=2.0, tissue_threshold=0.5, slide_mpp=None)
    ordered = SlidePatches([grid], length=5, random=False)
    assert len(ordered) == len(grid.coords)
    assert (ordered[0]["x"], ordered[0]["y"]) == grid.coords[0]
    torch.manual_seed(0)
    sample = SlidePatches([grid], length=5)[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.uint8


def test_grid_is_cached(tmp_path: Path) -> None:
    slide = write_slide(tmp_path / "s.tif", tissue=TISSUE)
    first = cached_grid(slide, tmp_path / "cache", 64, 1.0, 0.5, None)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    assert cached_grid(slide, tmp_path / "cache", 64, 1.0, 0.5, None) == first


def test_missing_resolution_asks_for_it(tmp_path: Path) -> None:
    slide = write_slide(tmp_path / "nores.tif", mpp=None, tissue=TISSUE)
    with pytest.raises(DomainSSLError, match=r"no resolution metadata.*data\.slide_mpp"):
        build_grid(slide, 64, 1.0, 0.5, slide_mpp=None)
    assert build_grid(slide, 64, 1.0, 0.5, slide_mpp=0.25).coords
    recorded = write_slide(tmp_path / "recorded.tif", mpp=0.5, tissue=TISSUE)
    assert build_grid(recorded, 64, 1.0, 0.5, slide_mpp=0.25).slide_mpp == pytest.approx(0.5)


def test_best_level_tolerates_rounded_level_sizes() -> None:
    slide = cast(openslide.OpenSlide, SimpleNamespace(level_downsamples=(1.0, 2.0005, 8.004)))
    assert best_level(slide, 2.0) == 1  # OpenSlide's own choice would be level 0
    assert best_level(slide, 4.0) == 1
    assert best_level(slide, 1.5) == 0
    assert best_level(slide, 8.0) == 2


def test_bad_and_empty_slides_are_reported_and_skipped(tmp_path: Path) -> None:
    good = write_slide(tmp_path / "good.tif", tissue=TISSUE)
    blank = write_slide(tmp_path / "blank.tif", tissue=[])
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00" + b"\x00" * 64)
    with pytest.warns(UserWarning, match=r"2 of 3 slides skipped") as record:
        grids = open_slide_grids([good, blank, broken], tmp_path / "c", 64, 1.0, 0.5, None)
    message = str(record[0].message)
    assert "broken.svs: not a slide: OpenSlide does not recognise" in message
    assert "blank.tif: no tissue" in message
    assert [Path(g.path).name for g in grids if g.coords] == ["good.tif"]


def test_no_usable_slide_and_empty_folder_stop(tmp_path: Path) -> None:
    blank = write_slide(tmp_path / "slides" / "blank.tif", tissue=[])
    with pytest.raises(DomainSSLError, match="No usable slide"), pytest.warns(UserWarning):
        open_slide_grids([blank], tmp_path / "c", 64, 1.0, 0.5, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DomainSSLError, match="No slides in"):
        list_slides(tmp_path / "empty")


def test_a_folder_scan_keeps_unrecognised_slide_files_to_name_them(tmp_path: Path) -> None:
    good = write_slide(tmp_path / "slides" / "good.tif", tissue=TISSUE)
    broken = tmp_path / "slides" / "broken.svs"
    broken.write_bytes(b"garbage, not a slide")
    (tmp_path / "slides" / "notes.txt").write_text("not a slide and not named as one")
    assert list_slides(tmp_path / "slides") == [broken, good]
    with pytest.warns(UserWarning, match=r"1 of 2 slides skipped") as record:
        open_slide_grids([broken, good], tmp_path / "c", 64, 1.0, 0.5, None)
    assert f"{broken}: not a slide" in str(record[0].message)


def test_csv_manifest(tmp_path: Path) -> None:
    write_slide(tmp_path / "a.tif", tissue=TISSUE)
    (tmp_path / "slides.csv").write_text("path\na.tif\n")
    assert list_slides(tmp_path / "slides.csv") == [(tmp_path / "a.tif").resolve()]
