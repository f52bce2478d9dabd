"""Tile grids, the blending window and the bounded PCA sample of `domainssl infer`."""

import math

import numpy as np
import pytest

from domainssl.errors import DomainSSLError
from domainssl.infer.pca import PcaStretch, Reservoir
from domainssl.infer.tiles import blend_grid, blend_weights, cell_grid


@pytest.mark.parametrize(("length", "tile", "overlap"), [(300, 32, 8), (20, 32, 8), (65, 32, 31)])
def test_tile_grids_cover_the_image_with_regular_steps(
    length: int, tile: int, overlap: int
) -> None:
    grid = blend_grid(length, 7, tile, overlap)
    starts = [grid.origin(index)[0] for index in range(0, len(grid), grid.cols)]
    assert starts == [k * (tile - overlap) for k in range(grid.rows)]
    covered = np.zeros(length + tile, bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered[:length].all()  # edge tiles padded, never dropped ...
    assert len(starts) == 1 or starts[-2] + tile < length  # ... and none is superfluous
    cells = cell_grid(length, 7, tile, overlap)
    assert cells.rows == math.ceil(length / (tile - overlap))
    assert cells.origin(cells.cols) == (tile - overlap - overlap // 2, -(overlap // 2))


def test_blend_window_is_a_symmetric_positive_bump_fading_out_at_the_edges() -> None:
    window = blend_weights(256)
    assert 0 < window.min() < 1e-8  # corners: positive, but next to nothing
    assert window.max() == pytest.approx(1, abs=1e-3)  # centre
    assert np.array_equal(window, window.T) and np.array_equal(window, window[::-1])
    with pytest.raises(DomainSSLError, match="overlap must be"):
        blend_grid(10, 10, 32, 32)


def test_reservoir_keeps_a_bounded_sample_of_the_whole_stream() -> None:
    reservoir = Reservoir(dim=1, capacity=50)
    for start in range(0, 10_000, 100):
        reservoir.add(np.arange(start, start + 100, dtype=np.float32)[:, None])
    sample = reservoir.vectors()[:, 0]
    assert sample.shape == (50,) and len(set(sample.tolist())) == 50
    assert sample.min() < 2500 and sample.max() > 7500  # drawn from the whole stream


def test_pca_colours_follow_the_main_direction_of_the_sample() -> None:
    direction = np.array([3.0, -4.0, 0.0, 0.0]) / 5
    positions = np.linspace(-10, 10, 101)
    noise = np.random.default_rng(0).normal(0, 0.01, (101, 4))
    stretch = PcaStretch.fit((positions[:, None] * direction + noise).astype(np.float32))
    colours = stretch.apply(positions[:, None] * direction)  # (101, 3)
    assert colours.min() >= 1  # 0 is left for nodata
    steps = np.diff(colours[:, 0].astype(int))
    assert np.all(steps <= 0) or np.all(steps >= 0)  # monotone along the main direction
    assert {int(colours[0, 0]), int(colours[-1, 0])} == {1, 255}  # stretched to the full range
    assert abs(abs(stretch.components[0] @ direction) - 1) < 1e-3
