"""`domainssl infer --devices N` on GeoTIFFs: the output rows split into parts, each run by
its own process (here on the CPU), joined into the output of a single-process run; an
interrupted part resumes from the rows it wrote."""

from functools import partial
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from fixtures import write_geotiff, write_infer_models
from torch import nn

from domainssl.infer.geotiff import resumable as partial_module
from domainssl.infer.geotiff import streaming
from domainssl.infer.geotiff.infer import infer_geotiff
from domainssl.infer.geotiff.row_parts import _run_part, split
from domainssl.infer.geotiff.streaming import RunOptions, plan_run


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_infer_models(tmp_path_factory.mktemp("models"), 3)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """(3, 300, 100) with nodata (0) in the top 40 rows and a bottom-right block."""
    array = np.random.default_rng(0).integers(100, 3000, (3, 300, 100)).astype(np.uint16)
    array[:, :40] = 0
    array[:, 200:, 60:] = 0
    return write_geotiff(tmp_path / "scene.tif", array, nodata=0)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.mark.parametrize(("kind", "overlap"), [("segment", 8), ("embed", 0)])
def test_parts_cover_the_rows_and_start_at_tile_row_boundaries(
    models: dict, scene: Path, kind: str, overlap: int
) -> None:
    plan = plan_run(models[kind], scene, 32, overlap, probabilities=False)
    unit = plan.rows_per_tile_row
    for first in (0, plan.rows // 3):
        for count in (1, 2, 3, 5, 100):
            parts = split(plan, first, count)
            assert (parts[0].first, parts[-1].last) == (first, plan.rows)
            assert all(a.last == b.first and a.first < a.last for a, b in pairwise(parts))
            assert all(part.count == len(parts) for part in parts)
            assert len(parts) == min(count, plan.grid.rows - first // unit)
            for part in parts[1:]:  # a tile row's first output row, never the last tile row
                assert part.first % unit == 0 and 0 < part.first // unit < plan.grid.rows


@pytest.mark.parametrize(("kind", "overlap"), [("segment", 8), ("embed", 0)])
def test_two_processes_write_the_single_process_output(
    models: dict, scene: Path, kind: str, overlap: int
) -> None:
    run = partial(infer_geotiff, models[kind], scene, tile=32, overlap=overlap, num_workers=0)
    single = run(scene.parent / "single.tif")
    out = scene.parent / "out" / "two.tif"
    split_run = run(out, devices=2)
    expected, written = read(scene.parent / "single.tif"), read(out)
    if kind == "segment":
        np.testing.assert_array_equal(written, expected)
        # the second part also runs the tile row above it: at most one row of 4 tiles more
        assert single.tiles_run < split_run.tiles_run <= single.tiles_run + 4
        assert sorted(p.name for p in out.parent.iterdir()) == ["two.tif"]
    else:
        np.testing.assert_allclose(written, expected, rtol=1e-4, atol=1e-5)
        assert split_run.tiles_run == single.tiles_run
        pictures = read(out.with_name("two_pca.tif")), read(scene.parent / "single_pca.tif")
        assert np.abs(pictures[0].astype(int) - pictures[1]).max() <= 1


def test_an_interrupted_part_resumes_from_its_rows_and_joins_into_the_whole_output(
    models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    array = np.random.default_rng(1).integers(100, 3000, (3, 800, 40)).astype(np.uint16)
    scene = write_geotiff(tmp_path / "tall.tif", array)
    run = partial(infer_geotiff, models["segment"], scene, tile=32, overlap=8, batch_size=2)
    single = run(tmp_path / "single.tif", num_workers=0)
    # 33 x 2 tiles; two parts: output rows [0, 384) (tile rows 0..15), [384, 800) (15..32)
    plan = plan_run(models["segment"], scene, 32, 8, probabilities=False)
    first, second = split(plan, 0, 2)
    assert (first.first, first.last, second.last) == (0, 384, 800)
    real_network = streaming.load_network

    class StopsAtCall13(nn.Module):
        """The real network, interrupted at its 13th batch: tile row 10 (call 11) finished
        rows up to 264, so the first 256 are on disk."""

        def __init__(self, network: nn.Module) -> None:
            super().__init__()
            self.network, self.calls = network, 0

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 13:
                raise KeyboardInterrupt("stop")
            return self.network(images)

    monkeypatch.setattr(partial_module, "FLUSH_INTERVAL_S", 0.0)
    monkeypatch.setattr(
        streaming,
        "load_network",
        lambda model_dir, spec: StopsAtCall13(real_network(model_dir, spec)),
    )
    out = tmp_path / "out" / "prediction.tif"
    threads = torch.get_num_threads()
    try:
        with pytest.raises(KeyboardInterrupt):
            _run_part(plan, first, out, RunOptions(batch_size=2, num_workers=0), False, [0, 0])
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        ".prediction.tif.part1of2.partial",
        ".prediction.tif.part1of2.progress.json",
    ]
    monkeypatch.undo()
    resumed = run(out, devices=2, resume=True, num_workers=0)
    # part 1 goes on from row 256 (tile rows 10..15), part 2 runs whole (tile rows 15..32)
    assert resumed.tiles_run == 6 * 2 + 18 * 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["prediction.tif"]
    np.testing.assert_array_equal(read(out), read(tmp_path / "single.tif"))
    assert single.tiles_run == 33 * 2
