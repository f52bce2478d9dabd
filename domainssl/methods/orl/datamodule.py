"""ORL's data: the fixed image set that stage 2 mines among (with its object proposals),
and the stage-3 data module that pairs those images with their mined partners."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from domainssl.config import RunConfig
from domainssl.data.datamodule import PretrainData, PretrainDataModule, prepare_pretrain_data
from domainssl.data.proposal_cache import ProposalBoxes, compute_proposals
from domainssl.data.stain_setup import StainSetup
from domainssl.errors import DomainSSLError
from domainssl.methods.orl.pairs import FixedImages, PairedSamples, load_pairs
from domainssl.views.proposals import ProposalSettings
from domainssl.views.settings import CropViewsConfig

STAGE2 = "stage2"
"""The stage-2 folder inside an ORL run: fixed windows, proposals, embeddings, pairs."""


def crop_views(config: RunConfig) -> CropViewsConfig:
    """The run's views, which ORL needs to crop object boxes."""
    if not isinstance(config.views, CropViewsConfig):
        raise DomainSSLError(
            f"ORL crops object boxes, which the {config.views.preset} views do not do: "
            "use views.preset=eo or pathology."
        )
    return config.views


def mining_images(config: RunConfig, run_dir: Path) -> PretrainData:
    """The images stage 2 mines among, each with its proposals (a :class:`ProposalBoxes`
    with a store): the chips themselves, or one saved draw of random windows (scenes,
    slides). Everything is cached in the run folder, so stage 3 reads the same set."""
    settings = ProposalSettings.from_views(crop_views(config))
    stain = StainSetup(config.data, run_dir)
    data = prepare_pretrain_data(
        config.data, config.domain, run_dir, config.trainer.seed, stain, settings
    )
    boxes = data.dataset
    assert isinstance(boxes, ProposalBoxes)
    if boxes.store is None:  # random windows: fix one set of them to mine among
        folder = run_dir / STAGE2
        fixed = FixedImages(_fixed_windows(boxes, folder / "windows.npy"))
        store = compute_proposals(fixed, folder / "proposals", settings, "stage-2 windows")
        boxes = ProposalBoxes(fixed, store, settings)
    return replace(data, dataset=boxes, stain_norm=stain.state)


def _fixed_windows(boxes: ProposalBoxes, path: Path) -> torch.Tensor:
    """One draw of every random window (scenes, slides), saved so reruns see the same."""
    if not path.is_file():
        images = torch.stack([boxes.source[i]["image"] for i in range(len(boxes))])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, images.numpy())
    return torch.from_numpy(np.load(path))


class ObjectPairsDataModule(PretrainDataModule):
    """Stage 3: the mining images, each with a proposal box and one mined object pair."""

    def build(self) -> PretrainData:
        data = mining_images(self.config, self.run_dir)
        assert isinstance(data.dataset, ProposalBoxes)
        pairs = load_pairs(self.run_dir / STAGE2 / "pairs")
        return replace(data, dataset=PairedSamples(data.dataset, pairs))
