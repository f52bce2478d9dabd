"""The run's stain normalization: fit on a reference or the data set, cached in the run."""

import json
from pathlib import Path

import numpy as np
import torch
from fixtures import constructed_image, write_chip_folder
from PIL import Image
from torch.utils.data import TensorDataset

from domainssl.config import DataConfig
from domainssl.data.folder import ChipFolder, InMemoryChips, apply_transform
from domainssl.data.stain_setup import StainSetup

EMPTY = TensorDataset(torch.zeros(0))  # a reference fit never reads the data set


def write_reference(path: Path) -> None:
    pixels = (constructed_image().permute(1, 2, 0) * 255).round().byte().numpy()
    Image.fromarray(pixels).save(path)


def test_fit_on_a_reference_is_cached_and_reused(tmp_path: Path) -> None:
    write_reference(tmp_path / "ref.png")
    config = DataConfig(stain_norm="macenko", stain_reference=str(tmp_path / "ref.png"))
    first = StainSetup(config, tmp_path)
    assert first(EMPTY) is not None and first.state is not None
    assert first.state["fitted_on"] == str(tmp_path / "ref.png")
    cached = json.loads((tmp_path / "stain_norm.json").read_text())
    cached["max_concentrations"] = [9.0, 9.0]  # a restart must read the file, not refit
    (tmp_path / "stain_norm.json").write_text(json.dumps(cached))
    second = StainSetup(config, tmp_path)
    second(EMPTY)
    assert second.state == cached
    other = StainSetup(config.model_copy(update={"stain_norm": "reinhard"}), tmp_path)
    other(EMPTY)
    assert other.state is not None and other.state["method"] == "reinhard"


def test_in_memory_chips_are_normalized_once_and_stay_uint8(tmp_path: Path) -> None:
    write_chip_folder(tmp_path / "chips", per_class=2, size=16, fmt="png")
    chips = InMemoryChips(ChipFolder(tmp_path / "chips", size=16))
    before = chips.images.clone()
    setup = StainSetup(DataConfig(stain_norm="reinhard"), tmp_path)
    transform = setup(chips)
    assert transform is not None and setup.state is not None
    assert setup.state["fitted_on"] == "the data set"
    same = apply_transform(chips, transform)
    assert same is chips and chips.images.dtype == torch.uint8
    expected = transform(before).round().clamp(0, 255).to(torch.uint8)
    assert np.array_equal(chips.images.numpy(), expected.numpy())
    assert not torch.equal(chips.images, before)
