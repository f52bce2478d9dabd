"""torchgeo data sets as pretraining input: ``--data torchgeo:<Class>:<root>``."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import FAST
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader
from torchgeo_fixtures import write_eurosat, write_sentinel2_tile
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.config import DataConfig
from domainssl.data.datamodule import PretrainData, train_loader
from domainssl.data.samplers import DrawSampler, Shard
from domainssl.data.stats import BandStats
from domainssl.data.torchgeo_source import TorchGeoWindows, torchgeo_dataset
from domainssl.export import load_backbone

BANDS = ["B02", "B03", "B04", "B08"]
runner = CliRunner()


@pytest.fixture
def s2_tile(tmp_path: Path) -> Path:
    return write_sentinel2_tile(tmp_path / "S2_tile", tuple(BANDS))


def s2_windows(root: Path, seed: int = 0, **settings: object) -> TorchGeoWindows:
    config = DataConfig(bands=BANDS, sample_size=32, samples_per_epoch=16, **settings)  # type: ignore[arg-type]
    dataset, names = torchgeo_dataset(f"torchgeo:Sentinel2:{root}", config, seed)
    assert names == BANDS and isinstance(dataset, TorchGeoWindows)
    return dataset


def pretrain(*args: str) -> tuple[int, str]:
    result = runner.invoke(
        app, ["pretrain", "--domain", "eo", *args, *[f"--set={s}" for s in FAST]]
    )
    return result.exit_code, result.output


def test_sentinel2_tile_folder_pretrains_and_exports_its_band_names(
    s2_tile: Path, tmp_path: Path
) -> None:
    code, output = pretrain(
        *("--data", f"torchgeo:Sentinel2:{s2_tile}", "--out", str(tmp_path), "--name", "r"),
        f"--set=data.bands=[{','.join(BANDS)}]",
        "--set=data.samples_per_epoch=32",
        "--set=trainer.limit_train_batches=2",
    )
    assert code == 0, output
    _, meta = load_backbone(tmp_path / "r")
    assert meta.band_names == BANDS and meta.in_chans == 4
    assert meta.data_source == f"torchgeo:Sentinel2:{s2_tile}"
    assert len(meta.mean) == 4 and 100 < meta.mean[0] < 4000


def test_windows_are_the_files_pixels_band_by_band(s2_tile: Path) -> None:
    window = s2_windows(s2_tile)[3]["image"].numpy()  # (4, 32, 32)
    assert window.shape == (4, 32, 32) and window.dtype == np.float32
    with rasterio.open(next((s2_tile / "R10m").glob("*_B02_10m.tif"))) as src:
        first = src.read(1).astype(np.float32)
    rows, cols = np.nonzero((sliding_window_view(first, (32, 32)) == window[0]).all(axis=(2, 3)))
    assert len(rows) == 1  # the window sits at one offset of B02; the other bands there too
    for index, band in enumerate(BANDS):
        with rasterio.open(next((s2_tile / "R10m").glob(f"*_{band}_10m.tif"))) as src:
            pixels = src.read(1)[rows[0] : rows[0] + 32, cols[0] : cols[0] + 32]
        np.testing.assert_array_equal(window[index], pixels)


def test_windows_follow_seed_epoch_and_rank(s2_tile: Path) -> None:
    dataset = s2_windows(s2_tile)
    data = PretrainData(dataset, BANDS, BandStats([0.0] * 4, [1.0] * 4, 1, "s"), "s", None)
    config = DataConfig(batch_size=4, num_workers=0)

    def epoch_images(seed: int, epoch: int, rank: int) -> torch.Tensor:
        loader = train_loader(data, config, seed, lambda: epoch, Shard(rank, 2))
        assert isinstance(loader.sampler, DrawSampler)
        return torch.cat([batch["image"] for batch in loader])  # (8, 4, 32, 32)

    first = epoch_images(0, 0, 0)
    assert first.shape == (8, 4, 32, 32)
    assert torch.equal(first, epoch_images(0, 0, 0))
    for other in [epoch_images(0, 0, 1), epoch_images(0, 1, 0)]:
        assert not (other[:, None] == first[None]).flatten(2).all(2).any()  # no shared window
    assert not torch.equal(s2_windows(s2_tile, seed=1)[0]["image"], dataset[0]["image"])


def test_worker_processes_read_the_same_windows(s2_tile: Path) -> None:
    dataset = s2_windows(s2_tile)
    dataset[0]  # the parent's open file handles are not reused by the forked workers

    def read(workers: int) -> torch.Tensor:
        loader = DataLoader(dataset, batch_size=4, num_workers=workers)
        return torch.cat([batch["image"] for batch in loader])  # (16, 4, 32, 32)

    assert torch.equal(read(0), read(2))


def test_windows_with_nodata_are_redrawn(tmp_path: Path) -> None:
    root = write_sentinel2_tile(tmp_path / "S2_tile", tuple(BANDS), nodata_rows=80)
    dataset = s2_windows(root, max_nodata_fraction=0.0)
    images = torch.stack([dataset[k]["image"] for k in range(16)])
    assert (images > 0).any(dim=1).all()  # no pixel where every band is nodata (0)


def test_eurosat_layout_gives_chips_with_its_band_names(tmp_path: Path) -> None:
    root = write_eurosat(tmp_path / "EuroSAT")
    config = DataConfig(sample_size=32, bands=["B04", "B03", "B02"])
    chips, names = torchgeo_dataset(f"torchgeo:EuroSAT:{root}", config)
    assert names == ["B04", "B03", "B02"] and len(chips) == 8  # type: ignore[arg-type]
    sample = chips[5]
    assert sample["image"].shape == (3, 32, 32) and sample["label"] == 1
    _, all_names = torchgeo_dataset(f"torchgeo:EuroSAT:{root}", DataConfig())
    assert len(all_names) == 13 and all_names[-1] == "B8A"


@pytest.mark.parametrize(
    ("spec", "sets", "message"),
    [
        ("torchgeo:Sentinel3:{tile}", [], "no raster or non-geo data set class 'Sentinel3'"),
        ("torchgeo:Sentinel2:{tile}", ["data.bands=[B02,B99]"], "data.bands ['B99'] are not"),
        ("torchgeo:Sentinel2:{empty}", ["data.bands=[B02]"], "'T*_*_B02*.*'"),
        ("torchgeo:Sentinel2:{tile}", ["data.bands=[B02,B05]"], "band B05 has no file"),
        ("torchgeo:Sentinel2:{tile}/nowhere", [], "does not exist"),
        ("torchgeo:EuroSAT:{empty}", [], "torchgeo found no EuroSAT data"),
        ("torchgeo:Sentinel2", [], "write torchgeo:<DatasetClass>:<root folder>"),
    ],
)
def test_bad_torchgeo_data_exit_2_naming_the_problem(
    spec: str, sets: list[str], message: str, s2_tile: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    data = spec.format(tile=s2_tile, empty=tmp_path / "empty")
    args = ["pretrain", "--data", data, "--out", str(tmp_path), *[f"--set={s}" for s in sets]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
