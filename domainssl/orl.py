"""ORL (Xie et al. 2021) in one command: three stages under one run folder and budget.

``<run>/stage1``: image-level BYOL (a full pretrain run; or ``method.orl_init``, an existing
run). ``<run>/stage2``: image embeddings, kNN, proposals and mined object pairs
(:mod:`domainssl.methods.orl_mining`). ``<run>`` itself: stage 3, object-level BYOL
started from the stage-1 backbone, whose export is the run's export. ``trainer.max_time``
is split by ``method.orl_stage_shares``; time a stage leaves unused moves to the next.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from domainssl.checkpointing import LAST_CHECKPOINT
from domainssl.config import RunConfig, build_config, set_dotted
from domainssl.data.datamodule import PretrainData, prepare_pretrain_data
from domainssl.data.orl_pairs import FixedImages, ObjectPairs, PairedSamples, load_pairs
from domainssl.data.proposal_cache import ProposalBoxes, compute_proposals
from domainssl.errors import DomainSSLError
from domainssl.export import load_backbone
from domainssl.methods.orl_mining import MiningSettings, mine_pairs
from domainssl.pretrain import new_run_dir, pretrain
from domainssl.stain_setup import StainSetup
from domainssl.views.proposals import ProposalSettings

EXPORT = "backbone.safetensors"
MIN_STAGE_S = 5.0  # a stage whose budget is spent still gets this long


def _report(message: str) -> None:
    print(message, flush=True)


def _stage_config(config: RunConfig, changes: Mapping[str, object]) -> RunConfig:
    tree = config.model_dump(mode="json")
    for key, value in changes.items():
        set_dotted(tree, key, value)
    return build_config(tree, "ORL stage config")


def _budget(seconds: float | None) -> str | None:
    return None if seconds is None else f"00:00:{max(seconds, MIN_STAGE_S):.1f}"


def pretrain_orl(config: RunConfig, resume: Path | None = None, progress_bar: bool = True) -> Path:
    """Run (or resume) ORL's three stages and export the stage-3 backbone.

    Args:
        config: a run config with ``method.name`` orl.
        resume: the run folder of an interrupted ORL run; finished stages are skipped.
        progress_bar: show Lightning's progress bar in stages 1 and 3.
    """
    start = time.monotonic()
    run_dir = resume if resume is not None else new_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    total = config.trainer.max_time_s
    shares = config.method.orl_stage_shares

    def left(share_end: float) -> float | None:
        """Seconds until the end of the stages whose shares sum to ``share_end``."""
        return None if total is None else start + total * share_end - time.monotonic()

    stage1 = _stage_one(config, run_dir, _budget(left(shares[0])), progress_bar)
    _report("stage 2/3: mining cross-image object pairs")
    remaining = left(shares[0] + shares[1])
    deadline = None if remaining is None else time.monotonic() + remaining
    boxes, pairs = _stage_two(config, run_dir, stage1, deadline)
    _report(f"stage 3/3: object-level BYOL on {len(pairs)} mined pairs + intra-image RoIs")
    stage3 = _stage_config(
        config,
        {"out": str(run_dir.parent), "name": run_dir.name, "model.init": str(stage1 / EXPORT),
         "trainer.max_time": _budget(left(1.0))},
    )  # fmt: skip

    def with_pairs(data: PretrainData) -> PretrainData:
        paired = PairedSamples(boxes, pairs)
        return PretrainData(paired, data.band_names, data.stats, data.source, data.mpp)

    again = resume is not None and (run_dir / LAST_CHECKPOINT).is_file()
    return pretrain(stage3, run_dir if again else None, progress_bar, dataset_hook=with_pairs)


def _stage_one(config: RunConfig, run_dir: Path, budget: str | None, progress_bar: bool) -> Path:
    """The stage-1 run folder: ``method.orl_init``, a finished one, or a new BYOL run."""
    if config.method.orl_init is not None:
        stage1 = Path(config.method.orl_init)
        if not (stage1 / EXPORT).is_file():
            raise DomainSSLError(
                f"method.orl_init {stage1} holds no {EXPORT}: give the folder of a finished "
                "`domainssl pretrain` run (or drop --init to train stage 1)."
            )
        _report(f"stage 1/3: reusing {stage1}")
        return stage1
    stage1 = run_dir / "stage1"
    if (stage1 / EXPORT).is_file():
        _report(f"stage 1/3: already done ({stage1})")
        return stage1
    _report(f"stage 1/3: image-level BYOL (budget {budget or 'epochs'})")
    changes = {"method.name": "byol", "out": str(run_dir), "name": "stage1",
               "trainer.max_time": budget}  # fmt: skip
    again = (stage1 / LAST_CHECKPOINT).is_file()
    return pretrain(_stage_config(config, changes), stage1 if again else None, progress_bar)


def _stage_two(
    config: RunConfig, run_dir: Path, stage1: Path, deadline: float | None
) -> tuple[ProposalBoxes, ObjectPairs]:
    """Proposals of a fixed image set and the object pairs mined among them."""
    settings = ProposalSettings.from_views(config.views)
    stain = StainSetup(config.data, run_dir)
    data = prepare_pretrain_data(
        config.data, config.domain, run_dir, config.trainer.seed, stain, settings
    )
    boxes = data.dataset
    assert isinstance(boxes, ProposalBoxes)
    folder = run_dir / "stage2"
    if boxes.store is None:  # random windows: fix one set of them to mine among
        images = _fixed_windows(boxes, folder / "windows.npy")
        fixed = FixedImages(images)
        store = compute_proposals(fixed, folder / "proposals", settings, "stage-2 windows")
        boxes = ProposalBoxes(fixed, store, settings)
    assert boxes.store is not None
    backbone, meta = load_backbone(stage1)
    mining = MiningSettings(
        config.method.orl_neighbors,
        config.method.orl_top_fraction,
        config.method.orl_mine_images,
        config.views.crop_size,
        config.data.batch_size,
        config.trainer.seed,
    )
    pair_dir = mine_pairs(
        backbone, boxes.source, boxes.store, meta.mean, meta.std, mining, folder, deadline
    )
    pairs = load_pairs(pair_dir)
    _report(f"stage 2/3: {len(pairs)} pairs for {len(np.unique(pairs.image))} images")
    return boxes, pairs


def _fixed_windows(boxes: ProposalBoxes, path: Path) -> torch.Tensor:
    """One draw of every random window (scenes, slides), saved so reruns see the same."""
    if not path.is_file():
        images = torch.stack([boxes.source[i]["image"] for i in range(len(boxes))])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, images.numpy())
    return torch.from_numpy(np.load(path))
