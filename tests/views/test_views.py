"""Batch views for N-band input: shapes, identities at zero strength, geometry, ranges."""

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from domainssl.errors import DomainSSLError
from domainssl.views.crops import random_crop_affine, resample
from domainssl.views.presets import EOViews, PathologyViews
from domainssl.views.settings import EOViewsConfig, PathologyViewsConfig
from domainssl.views.spectral import band_dropout, band_jitter, gaussian_noise, random_blur

CROPS_OFF: dict[str, Any] = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "flip_p": 0.0,
    "rot90": False,
    "blur_p": 0.0,
}
OFF: dict[str, Any] = {**CROPS_OFF, "jitter_p": 0.0, "band_dropout_p": 0.0, "noise_std": 0.0}


def test_all_off_is_identity() -> None:
    images = torch.randn(4, 7, 24, 24)
    mean, std = [1.0] * 7, [2.0] * 7
    views = EOViews(EOViewsConfig(crop_size=24, **OFF), mean, std)(images)
    assert torch.allclose(views, (images - 1) / 2, atol=1e-5)


def test_flip_and_rotation_are_exact_permutations() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    torch.manual_seed(0)
    for _ in range(10):
        theta = random_crop_affine(2, (1.0, 1.0), (1.0, 1.0), 0.5, True, images.device)
        out = resample(images, theta, 8)
        candidates = [
            torch.rot90(img, k, dims=(-2, -1))
            for k in range(4)
            for img in (images, images.flip(-1))
        ]
        for b in range(2):
            assert any(torch.allclose(out[b], c[b], atol=1e-4) for c in candidates)


def test_zero_strength_photometric_ops_are_identity() -> None:
    images = torch.randn(3, 5, 10, 10)
    assert torch.allclose(band_jitter(images, 1.0, 0.0, 0.0), images, atol=1e-6)
    assert torch.equal(band_dropout(images, 0.0), images)
    assert torch.equal(random_blur(images, 0.0, (0.1, 1.0)), images)
    assert torch.equal(gaussian_noise(images, 0.0), images)


def test_band_dropout_keeps_at_least_one_band() -> None:
    torch.manual_seed(0)
    out = band_dropout(torch.ones(64, 3, 2, 2), 0.95)
    assert bool((out.flatten(1).sum(1) > 0).all())


def test_views_differ_and_keep_band_count() -> None:
    torch.manual_seed(0)
    pipeline = EOViews(EOViewsConfig(crop_size=16), [0.0] * 11, [1.0] * 11)
    images = torch.randn(6, 11, 40, 40)
    a, b = pipeline(images), pipeline(images)
    assert a.shape == (6, 11, 16, 16) and not torch.allclose(a, b)


@settings(max_examples=25, deadline=None)
@given(
    bands=st.integers(1, 13),
    height=st.integers(16, 70),
    width=st.integers(16, 70),
    batch=st.integers(1, 4),
    crop=st.sampled_from([8, 16]),
)
def test_any_valid_input_gives_finite_views_of_configured_shape(
    bands: int, height: int, width: int, batch: int, crop: int
) -> None:
    images = torch.randn(batch, bands, height, width) * 100
    config = EOViewsConfig(crop_size=crop, band_dropout_p=0.3, blur_p=1.0)
    views = EOViews(config, [0.0] * bands, [100.0] * bands)(images)
    assert views.shape == (batch, bands, crop, crop)
    assert bool(torch.isfinite(views).all())


def test_pathology_views_off_is_standardize_and_on_stays_finite() -> None:
    torch.manual_seed(0)
    raw = torch.randint(0, 256, (4, 3, 32, 32)).float()
    mean, std = [180.0, 120.0, 170.0], [40.0, 50.0, 30.0]
    off = PathologyViews(
        PathologyViewsConfig(crop_size=32, hed_sigma=0.0, hed_bias=0.0, **CROPS_OFF), mean, std
    )
    expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(off(raw), expected, atol=1e-3)
    on = PathologyViews(PathologyViewsConfig(crop_size=16), mean, std)(raw)
    assert on.shape == (4, 3, 16, 16) and bool(torch.isfinite(on).all())


def test_pathology_views_refuse_non_rgb() -> None:
    with pytest.raises(DomainSSLError, match="RGB images"):
        PathologyViews(PathologyViewsConfig(), [0.0] * 4, [1.0] * 4)
