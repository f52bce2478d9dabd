"""Stain views: HED jitter identity and range, Macenko recovers constructed stain vectors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures import E_STAIN, H_STAIN, constructed_image

from domainssl.views.stain import (
    MacenkoNormalizer,
    PixelStainNormalization,
    ReinhardNormalizer,
    bounded_quantile,
    fit_stain_normalizer,
    hed_jitter,
    macenko_stains,
    od_to_rgb,
    perturb_stains,
    stain_normalizer_from_state,
)


def test_hed_jitter_zero_strength_is_identity() -> None:
    images = torch.rand(3, 3, 16, 16)
    images[0, :, 0, 0] = 0.0  # black: below the OD floor
    assert torch.allclose(hed_jitter(images, 0.0, 0.0), images, atol=1e-6)


def test_hed_jitter_stays_in_range_and_changes_colour() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 16, 16)
    jittered = hed_jitter(images, 0.3, 0.1)
    assert jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered, images, atol=1e-3)


def test_stain_perturbation_equals_scikit_image_hed_round_trip() -> None:
    """The bias is in scikit-image's rgb2hed units: hed2rgb(rgb2hed(x) * a + b) == ours."""
    from skimage.color import hed2rgb, rgb2hed

    rng = np.random.default_rng(0)
    stains = rng.uniform(0.0, 0.08, (2, 8, 8, 3))  # H, E, DAB concentrations >= 0
    stains[..., 2] *= 0.2  # little DAB, as in H&E
    rgb = hed2rgb(stains)  # (2, 8, 8, 3) in [0, 1]
    scale = np.array([[1.05, 0.95, 1.0], [0.97, 1.03, 1.02]])
    shift = np.array([[0.02, -0.01, 0.005], [-0.015, 0.03, 0.0]])
    expected = np.stack([hed2rgb(rgb2hed(rgb[i]) * scale[i] + shift[i]) for i in range(2)])
    images = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # (2, 3, 8, 8), float64
    ours = perturb_stains(images, torch.from_numpy(scale), torch.from_numpy(shift))
    assert np.abs(ours.permute(0, 2, 3, 1).numpy() - expected).max() < 1e-6


def test_a_bias_of_005_moves_rgb_as_much_as_scikit_image_does() -> None:
    from skimage.color import hed2rgb, rgb2hed

    rgb = hed2rgb(np.full((4, 4, 3), [0.05, 0.04, 0.005]))  # an H&E-like pink-purple
    shifted = hed2rgb(rgb2hed(rgb) + np.array([0.05, 0.0, 0.0]))  # more haematoxylin
    images = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    ours = perturb_stains(images, torch.ones(1, 3, dtype=torch.float64),
                          torch.tensor([[0.05, 0.0, 0.0]], dtype=torch.float64))  # fmt: skip
    move_skimage = np.abs(shifted - rgb).mean()
    move_ours = (ours - images).abs().mean().item()
    assert move_skimage > 0.05 and abs(move_ours / move_skimage - 1) < 1e-4


def test_macenko_recovers_constructed_stain_vectors() -> None:
    stains = macenko_stains(constructed_image())
    assert float(stains[0] @ H_STAIN) > 0.99
    assert float(stains[1] @ E_STAIN) > 0.99


def test_macenko_normalizer_maps_to_reference_stains() -> None:
    reference = constructed_image(0)
    # a differently stained image: eosin vector rotated, concentrations scaled
    other_e = F.normalize(torch.tensor([0.25, 0.9, 0.3]), dim=0)
    generator = torch.Generator().manual_seed(1)
    concentrations = torch.rand(2, 48 * 48, generator=generator) * torch.tensor([[0.6], [1.5]])
    image = od_to_rgb((torch.stack([H_STAIN, other_e]).T @ concentrations).reshape(3, 48, 48))
    normalizer = MacenkoNormalizer.fit(reference)
    normalized = normalizer(image[None])[0]
    assert float(macenko_stains(normalized)[1] @ E_STAIN) > 0.99
    assert normalized.min() >= 0 and normalized.max() <= 1


def test_reinhard_matches_reference_lab_statistics() -> None:
    from kornia.color import rgb_to_lab

    reference, image = constructed_image(0), constructed_image(2) * 0.8
    normalizer = ReinhardNormalizer.fit(reference)
    lab = rgb_to_lab(normalizer(image[None]))[0].reshape(3, -1)
    assert torch.allclose(lab.mean(dim=1), normalizer.mean, atol=0.5)


def test_stain_normalizer_state_round_trip_and_fit_on_several_patches() -> None:
    patches = torch.stack([constructed_image(), constructed_image().flip(-1)])
    for method in ("macenko", "reinhard"):
        fitted = fit_stain_normalizer(method, patches)
        rebuilt = stain_normalizer_from_state(fitted.state())
        assert torch.allclose(rebuilt(patches), fitted(patches))
    with pytest.raises(ValueError, match="too few stained pixels"):
        fit_stain_normalizer("macenko", torch.ones(2, 3, 8, 8))


def test_pixel_stain_normalization_works_on_8_bit_range() -> None:
    image = constructed_image()[None]
    state = {**fit_stain_normalizer("reinhard", image).state(), "fitted_on": "x"}
    normalize = PixelStainNormalization(state)
    out = normalize((image * 255).round().to(torch.uint8))
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
    assert torch.allclose(out / 255, normalize.normalizer(image), atol=0.02)
    assert repr(normalize) == "reinhard stain normalization fitted on x"


def test_percentiles_of_more_than_16m_values_are_estimated_from_a_subsample() -> None:
    values = torch.linspace(0, 1, 17_000_000)  # torch.quantile alone refuses over 16M values
    low, high = bounded_quantile(values, [0.01, 0.99])
    assert low.item() == pytest.approx(0.01, abs=1e-4)
    assert high.item() == pytest.approx(0.99, abs=1e-4)
    rows = torch.stack([values[:100], values[:100] * 2])
    assert torch.allclose(bounded_quantile(rows, 0.5), torch.quantile(rows, 0.5, dim=1))


def test_macenko_fits_a_reference_larger_than_quantile_accepts() -> None:
    large = constructed_image(seed=3, size=48).repeat(1, 90, 90)  # 4320 x 4320 = 18.7M px
    normalizer = MacenkoNormalizer.fit(large)
    direct = MacenkoNormalizer.fit(constructed_image(seed=3, size=48))
    assert torch.allclose(normalizer.stains, direct.stains, atol=1e-3)
