"""ORL's data: the fixed image set that stage 2 mines among (with its object proposals),
and the stage-3 data module, whose preparation is stage 2: mining the object pairs (once,
on global rank 0, on its accelerator) that every process then trains on."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from domainssl.config import RunConfig
from domainssl.console import say
from domainssl.data.datamodule import PretrainData, PretrainDataModule, prepare_pretrain_data
from domainssl.data.proposal_cache import ProposalBoxes, compute_proposals
from domainssl.data.stain_setup import StainSetup
from domainssl.export import load_backbone
from domainssl.methods.orl.config import ORLConfig, crop_views
from domainssl.methods.orl.mining import MiningSettings, mine_pairs
from domainssl.methods.orl.pairs import FixedImages, PairedSamples, load_pairs
from domainssl.views.proposals import ProposalSettings

STAGE2 = "stage2"
"""The stage-2 folder inside an ORL run: fixed windows, proposals, embeddings, pairs."""


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
    """Stage 3: the mining images, each with a proposal box and one mined object pair.

    :meth:`prepare_data` is stage 2: it embeds the images with the stage-1 backbone
    (``model.init``), retrieves neighbours and mines RoI pairs into ``<run>/stage2``, within
    the stage-2 share of ``trainer.max_time`` (which spans stages 2 and 3 here); a rerun goes
    on from what is cached. :meth:`setup` reads the pairs on every process.
    """

    def build(self) -> PretrainData:
        data = mining_images(self.config, self.run_dir)
        assert isinstance(data.dataset, ProposalBoxes)
        pairs = load_pairs(self.run_dir / STAGE2 / "pairs")
        return replace(data, dataset=PairedSamples(data.dataset, pairs))

    def prepare_data(self) -> None:
        start = time.monotonic()
        self.mine(start)
        super().prepare_data()
        self.preparation_seconds = time.monotonic() - start

    def mine(self, start: float) -> None:
        """Stage 2 into ``<run>/stage2`` (resumable), on this process's device."""
        settings = self.config.method
        assert isinstance(settings, ORLConfig) and self.config.model.init is not None
        images = mining_images(self.config, self.run_dir).dataset
        assert isinstance(images, ProposalBoxes) and images.store is not None
        backbone, meta = load_backbone(Path(self.config.model.init).parent)
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        deadline = None
        if (total := self.config.trainer.max_time_s) is not None:
            shares = settings.orl_stage_shares
            deadline = start + total * shares[1] / max(shares[1] + shares[2], 1e-9)
        mining = MiningSettings(
            settings.orl_neighbors,
            settings.orl_top_fraction,
            settings.orl_mine_images,
            crop_views(self.config).crop_size,
            self.config.data.batch_size,
            self.config.trainer.seed,
        )
        say("stage 2/3: mining cross-image object pairs")
        pair_dir = mine_pairs(
            backbone.to(device), images.source, images.store, meta.mean, meta.std, mining,
            self.run_dir / STAGE2, deadline,
        )  # fmt: skip
        pairs = load_pairs(pair_dir)
        say(f"stage 2/3: {len(pairs)} pairs for {len(np.unique(pairs.image))} images")
        say(f"stage 3/3: object-level BYOL on {len(pairs)} mined pairs + intra-image RoIs")
