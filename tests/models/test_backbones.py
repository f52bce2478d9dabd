"""Backbones: any band count, explicit first-conv adaptation, weights-only loading."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from domainssl.errors import DomainSSLError
from domainssl.models.backbones import apply_init, create_backbone
from domainssl.models.band_mapping import mean_repeat
from domainssl.models.init_weights import resolve_init


def test_any_band_count_gives_pooled_features() -> None:
    model = create_backbone("resnet10t", in_chans=13, small_input=True)
    assert model(torch.randn(2, 13, 32, 32)).shape == (2, model.num_features)


def test_unknown_backbone_is_clear() -> None:
    with pytest.raises(DomainSSLError, match="Unknown backbone 'resnet19'"):
        create_backbone("resnet19", 3)


def test_mean_repeat_keeps_response_to_equal_bands() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 3, 3, 3)
    adapted = mean_repeat(weight, 5)
    image3, image5 = torch.ones(1, 3, 6, 6), torch.ones(1, 5, 6, 6)
    out3 = torch.nn.functional.conv2d(image3, weight)
    out5 = torch.nn.functional.conv2d(image5, adapted)
    assert adapted.shape == (8, 5, 3, 3) and torch.allclose(out3, out5, atol=1e-5)


def test_band_mismatch_needs_explicit_adaptation(tmp_path: Path) -> None:
    rgb = create_backbone("resnet10t", 3)
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    four_band = create_backbone("resnet10t", 4)
    bands = ["B1", "B2", "B3", "B4"]
    with pytest.raises(DomainSSLError, match="adapt_in_chans=by_name"):
        apply_init(four_band, resolve_init(str(path)), bands)
    apply_init(four_band, resolve_init(str(path)), bands, adapt_in_chans="mean_repeat")
    first = four_band.state_dict()["conv1.0.weight"]
    assert torch.allclose(first, mean_repeat(rgb.state_dict()["conv1.0.weight"], 4))


class Evil:
    """Unpickling this runs ``Path.touch(marker)``: proof that code was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickle_checkpoint_is_refused_without_running(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    marker = tmp_path / "pwned-marker"
    torch.save({"conv1.weight": Evil(marker)}, path)
    with pytest.raises(DomainSSLError, match="pickled code, which is refused"):
        apply_init(create_backbone("resnet10t", 3), resolve_init(str(path)), ["r", "g", "b"])
    assert not marker.exists()
