"""Property test of the view pipelines: any valid N-band input at least the crop size gives
finite views of the configured shape."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from domainssl.views.presets import build_views
from domainssl.views.settings import EOViewsConfig, PathologyViewsConfig

FAST = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def eo_batches(draw: st.DrawFn) -> tuple[torch.Tensor, int, list[float], list[float]]:
    """Raw (B, C, H, W) pixels of any band count, size, range, with NaN nodata at times."""
    crop = draw(st.sampled_from([8, 16, 24]))
    bands = draw(st.integers(1, 13))
    height, width = draw(st.integers(crop, 3 * crop)), draw(st.integers(crop, 3 * crop))
    batch = draw(st.integers(1, 3))
    scale = draw(st.sampled_from([1e-3, 1.0, 255.0, 1e4, 1e6]))
    offset = draw(st.floats(-1e4, 1e4))
    nan_share = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    images = torch.rand(batch, bands, height, width, generator=generator) * scale + offset
    holes = torch.rand(batch, 1, height, width, generator=generator) < nan_share
    images = images.masked_fill(holes, float("nan"))  # (B, C, H, W)
    mean = [offset + scale / 2] * bands
    std = [draw(st.sampled_from([1e-6, 1.0, scale / 4]))] * bands
    return images, crop, mean, std


@FAST
@given(eo_batches(), st.floats(0.0, 1.0), st.booleans())
def test_eo_views_are_finite_and_of_the_crop_size(
    batch: tuple[torch.Tensor, int, list[float], list[float]], dropout: float, rot90: bool
) -> None:
    images, crop, mean, std = batch
    config = EOViewsConfig(crop_size=crop, band_dropout_p=dropout, rot90=rot90)
    torch.manual_seed(0)
    views = build_views(config, mean, std)(images)
    assert views.shape == (images.shape[0], images.shape[1], crop, crop)
    assert torch.isfinite(views).all()


@FAST
@given(
    st.sampled_from([8, 16, 32]),
    st.integers(0, 64),
    st.integers(0, 64),
    st.integers(1, 3),
    st.integers(0, 2**31 - 1),
)
def test_pathology_views_are_finite_and_of_the_crop_size(
    crop: int, extra_h: int, extra_w: int, batch: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, crop + extra_h, crop + extra_w)
    images = torch.randint(0, 256, shape, generator=generator).float()  # (B, 3, H, W)
    config = PathologyViewsConfig(crop_size=crop)
    torch.manual_seed(seed)
    views = build_views(config, [180.0, 120.0, 170.0], [40.0, 50.0, 30.0])(images)
    assert views.shape == (batch, 3, crop, crop)
    assert torch.isfinite(views).all()
