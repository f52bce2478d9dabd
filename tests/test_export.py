"""Export metadata: the preprocessing transfer/infer repeat, and resolution warnings."""

import warnings
from pathlib import Path

import pytest
import torch
from fixtures import constructed_image
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.export import BackboneMeta, check_resolution, preprocess
from domainssl.views.stain import PixelStainNormalization, fit_stain_normalizer


def meta(**changes: object) -> BackboneMeta:
    fields: dict = dict(
        timm_name="resnet10t",
        small_input=True,
        in_chans=3,
        band_names=["red", "green", "blue"],
        mean=[200.0, 150.0, 180.0],
        std=[20.0, 30.0, 25.0],
        feature_dim=512,
        input_size=32,
        method="simclr",
        domain="pathology",
        data_source="x",
        config={},
        mpp=0.5,
    )
    return BackboneMeta(**{**fields, **changes})


def test_preprocess_standardizes_after_the_recorded_stain_normalization() -> None:
    pixels = constructed_image()[None] * 255
    plain = meta()
    expected = (pixels - torch.tensor(plain.mean).view(1, 3, 1, 1)) / torch.tensor(plain.std).view(
        1, 3, 1, 1
    )
    assert torch.allclose(preprocess(plain, pixels), expected, atol=1e-5)

    state = {
        **fit_stain_normalizer("reinhard", constructed_image(1)[None]).state(),
        "fitted_on": "r",
    }
    normalized = PixelStainNormalization(state)(pixels)
    with_stain = preprocess(meta(stain_norm=state), pixels)
    assert torch.allclose(with_stain, preprocess(plain, normalized), atol=1e-5)
    assert not torch.allclose(with_stain, expected, atol=1e-2)


def test_resolution_mismatch_warns_and_a_match_does_not() -> None:
    with pytest.warns(UserWarning, match=r"slide.svs is at 0.25 µm/px .* pretrained at 0.5"):
        check_resolution(meta(), 0.25, "slide.svs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_resolution(meta(), 0.51, "slide.svs")
        check_resolution(meta(mpp=None), 0.25, "slide.svs")


def test_missing_stain_reference_is_a_clear_error(tmp_path: Path) -> None:
    args = ["pretrain", "--domain", "pathology", "--out", str(tmp_path)]
    args += ["--set=data.stain_norm=reinhard", f"--set=data.stain_reference={tmp_path / 'no.png'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "data.stain_reference" in result.output and "does not exist" in result.output
