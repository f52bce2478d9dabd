"""Loaders: chip folders, scene windows with nodata rejection, streaming band stats."""

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_geotiff, write_scene
from PIL import Image

from domainssl.config import DataConfig
from domainssl.data.datamodule import prepare_pretrain_data
from domainssl.data.eo import SceneWindows, list_scenes
from domainssl.data.folder import ChipFolder, InMemoryChips
from domainssl.data.stats import RunningBandStats, compute_band_stats
from domainssl.errors import DomainSSLError


def test_geotiff_chip_folder_reads_bands_and_labels(tif_chips: Path) -> None:
    chips = ChipFolder(tif_chips, size=16)
    assert len(chips) == 12 and chips.classes == ["class_0", "class_1"]
    sample = chips[7]
    assert sample["image"].shape == (4, 16, 16)
    assert sample["label"] == 1
    assert chips.band_names == ["B1", "B2", "B3", "B4"]


def test_jpeg_chips_are_uint8_rgb_and_cache_matches(jpg_chips: Path) -> None:
    chips = ChipFolder(jpg_chips, size=32)
    assert chips.band_names == ["red", "green", "blue"]
    cached = InMemoryChips(chips)
    assert cached.images.dtype == torch.uint8
    assert torch.equal(cached[3]["image"], chips[3]["image"])


def test_band_count_mismatch_is_clear(tif_chips: Path) -> None:
    with pytest.raises(DomainSSLError, match="has 4 bands but the config expects data.in_chans=3"):
        ChipFolder(tif_chips, size=16, in_chans=3)


def test_mixed_band_counts_name_the_file(tif_chips: Path) -> None:
    odd = write_geotiff(tif_chips / "class_1" / "zz_odd.tif", np.ones((3, 32, 32), np.uint16))
    chips = ChipFolder(tif_chips, size=16)
    with pytest.raises(DomainSSLError, match=f"{odd}.*3 bands"):
        chips[chips.files.index(odd)]


def test_corrupt_tiff_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "chips" / "broken.tif"
    bad.parent.mkdir()
    bad.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(DomainSSLError, match="broken.tif: cannot read this TIFF"):
        ChipFolder(bad.parent, size=16)


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DomainSSLError, match="holds no images"):
        ChipFolder(tmp_path, size=16)
    with pytest.raises(DomainSSLError, match="does not exist"):
        ChipFolder(tmp_path / "nope", size=16)


def test_scene_windows_reject_nodata(tmp_path: Path) -> None:
    # the top 150 of 200 rows are nodata: a 32 px window is valid only in the bottom part
    path = write_scene(tmp_path / "s.tif", height=200, width=100, nodata_rows=150)
    windows = SceneWindows([path], size=32, length=20, max_nodata_fraction=0.0)
    torch.manual_seed(0)
    for i in range(20):
        image = windows[i]["image"]
        assert image.shape == (4, 32, 32) and bool((image > 0).all())


def test_large_png_regions_work_as_scenes(tmp_path: Path) -> None:
    """Pathology regions of interest (e.g. 1000 px H&E PNGs) are windowed like scenes."""
    pixels = np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "roi.png")
    windows = SceneWindows(list_scenes(tmp_path), size=32, length=4)
    torch.manual_seed(0)
    image = windows[0]["image"].numpy().transpose(1, 2, 0)  # (32, 32, 3)
    candidates = np.lib.stride_tricks.sliding_window_view(pixels, (32, 32, 3))[..., 0, :, :, :]
    assert (candidates == image).all(axis=(-3, -2, -1)).sum() == 1  # a window of the region


def test_scene_all_nodata_is_clear(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "empty.tif", height=64, width=64, nodata_rows=64)
    with pytest.raises(DomainSSLError, match="mostly empty"):
        SceneWindows([path], size=32, length=4)[0]


def test_scene_smaller_than_window(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "tiny.tif", height=20, width=20)
    with pytest.raises(DomainSSLError, match="smaller than the window"):
        SceneWindows([path], size=32, length=4)


def test_running_stats_match_numpy_and_ignore_nan() -> None:
    torch.manual_seed(0)
    batches = [
        torch.randn(3, 2, 5, 5) * torch.tensor([1.0, 7.0]).view(1, 2, 1, 1) + 4 for _ in range(4)
    ]
    batches[1][0, 0, 0, 0] = float("nan")
    running = RunningBandStats(2)
    for batch in batches:
        running.update(batch)
    stats = running.result("test")
    values = torch.cat(batches).transpose(0, 1).reshape(2, -1).double().numpy()
    assert stats.mean == pytest.approx(np.nanmean(values, axis=1).tolist(), rel=1e-9)
    assert stats.std == pytest.approx(np.nanstd(values, axis=1).tolist(), rel=1e-9)


def test_constant_band_gets_unit_std() -> None:
    running = RunningBandStats(1)
    running.update(torch.full((2, 1, 4, 4), 3.0))
    with pytest.warns(UserWarning, match="constant"):
        assert running.result("flat").std == [1.0]


def test_stats_are_cached_for_the_same_source(tif_chips: Path, tmp_path: Path) -> None:
    config = DataConfig(path=str(tif_chips), sample_size=16, stats_samples=8)
    first = prepare_pretrain_data(config, "eo", tmp_path)
    stats_file = tmp_path / "band_stats.json"
    stats_file.write_text(stats_file.read_text().replace(str(first.stats.mean[0]), "123.0"))
    assert prepare_pretrain_data(config, "eo", tmp_path).stats.mean[0] == 123.0
    direct = compute_band_stats(first.dataset, 8, "x")
    assert direct.mean == pytest.approx(first.stats.mean)


def write_large_images(folder: Path, count: int = 3, side: int = 100) -> list[np.ndarray]:
    """``count`` random RGB PNGs of ``side`` px in a class subfolder, as MoNuSeg-like tiles."""
    rng = np.random.default_rng(0)
    (folder / "tiles").mkdir(parents=True)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]
    for index, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / "tiles" / f"tile_{index}.png")
    return images


@pytest.mark.parametrize("domain", ["eo", "pathology"])
def test_a_folder_of_images_over_twice_the_sample_size_is_windowed_not_shrunk(
    tmp_path: Path, domain: str, capsys: pytest.CaptureFixture[str]
) -> None:
    images = write_large_images(tmp_path / "data")
    config = DataConfig(path=str(tmp_path / "data"), sample_size=32, samples_per_epoch=24,
                        stats_samples=8)  # fmt: skip
    data = prepare_pretrain_data(config, domain, tmp_path / "run")
    assert isinstance(data.dataset, SceneWindows) and len(data.dataset) == 24
    assert data.band_names == ["red", "green", "blue"]  # as chips of the same files
    assert "about 100x100 px, more than twice data.sample_size=32" in capsys.readouterr().out
    window = data.dataset[0]["image"].numpy().transpose(1, 2, 0)  # (32, 32, 3)
    found = sum(
        (np.lib.stride_tricks.sliding_window_view(pixels, (32, 32, 3))[..., 0, :, :, :] == window)
        .all(axis=(-3, -2, -1))
        .sum()
        for pixels in images
    )
    assert found == 1  # a native-resolution window of one of the images


def test_data_kind_chips_keeps_resizing_large_images(tmp_path: Path) -> None:
    write_large_images(tmp_path / "data")
    config = DataConfig(path=str(tmp_path / "data"), sample_size=32, kind="chips",
                        stats_samples=8)  # fmt: skip
    data = prepare_pretrain_data(config, "eo", tmp_path / "run")
    assert isinstance(data.dataset, InMemoryChips) and len(data.dataset) == 3
    assert data.dataset[0]["image"].shape == (3, 32, 32)


def test_images_under_twice_the_sample_size_stay_chips(tmp_path: Path) -> None:
    write_large_images(tmp_path / "data", side=60)
    config = DataConfig(path=str(tmp_path / "data"), sample_size=32, stats_samples=8)
    dataset = prepare_pretrain_data(config, "eo", tmp_path / "run").dataset
    assert isinstance(dataset, InMemoryChips) and len(dataset) == 3
