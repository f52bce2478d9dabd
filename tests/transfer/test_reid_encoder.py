"""The re-ID encoder evaluates in eval mode, the random-init baseline included: a person's
features do not depend on the other images of its batch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import torch
from reid_fixtures import write_generic

from domainssl.data.reid import PersonImage
from domainssl.export import BackboneMeta, export_backbone
from domainssl.models.backbones import create_backbone
from domainssl.transfer.reid.transfer import ReidSettings, pretrained_encoder


@pytest.mark.parametrize("baseline", ["pretrained", "random"])
def test_features_do_not_depend_on_the_batch(
    tmp_path: Path, baseline: Literal["pretrained", "random"]
) -> None:
    meta = BackboneMeta("resnet10t", True, 3, ["red", "green", "blue"], [128.0] * 3,
                        [64.0] * 3, 512, 32, "mmgl", "reid", "x",
                        {"data": {"person_size": [32, 16]}})  # fmt: skip
    torch.manual_seed(0)
    export_backbone(create_backbone("resnet10t", 3, True), meta, tmp_path / "run")
    root = write_generic(tmp_path / "people", identities=4, per_identity=2)
    images = [PersonImage(p, int(p.parent.name.split("_")[1]), 0, 0)
              for p in sorted((root / "rgb").rglob("*.jpg"))]  # fmt: skip
    together = pretrained_encoder(tmp_path / "run", ReidSettings(baseline=baseline, batch_size=8))
    alone = pretrained_encoder(tmp_path / "run", ReidSettings(baseline=baseline, batch_size=1))
    if baseline == "random":  # --seed decides the random weights
        for name, value in together.backbones[0].state_dict().items():
            assert torch.equal(value, alone.backbones[0].state_dict()[name]), name
        other = pretrained_encoder(tmp_path / "run", ReidSettings(baseline=baseline, seed=1))
        assert not torch.equal(*(next(iter(e.backbones[0].parameters())) for e in (alone, other)))
    assert not any(b.training for b in together.backbones.values())
    torch.testing.assert_close(together(images), alone(images), rtol=1e-4, atol=1e-5)
