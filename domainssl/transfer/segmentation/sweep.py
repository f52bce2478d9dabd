"""Segmentation transfer over label fractions and seeds (see
:mod:`domainssl.transfer.label_efficiency`): each (init, fraction, seed) trains a fresh model
on that share of the training images (by image, drawn with the seed, at least one) and is
scored (mIoU) on the whole, fixed test part."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from domainssl.export import WEIGHTS, read_meta
from domainssl.transfer.label_efficiency import (
    SweepJournal,
    SweepPlan,
    labeled_subset,
    run_sweep,
    sweep_facts,
    write_sweep_outputs,
)
from domainssl.transfer.segmentation.data import SegmentationSet, load_segmentation_data
from domainssl.transfer.segmentation.model import build_segmenter
from domainssl.transfer.segmentation.training import (
    config_for_init,
    encoder_schedule,
    evaluate_segmenter,
    fit_segmenter,
)
from domainssl.transfer.segmentation.transfer import SegmentSettings


def transfer_segment_sweep(
    run_dir: Path, data_path: Path, out_dir: Path, settings: SegmentSettings, plan: SweepPlan
) -> dict[str, Any]:
    """Run the plan; write metrics.json, report.md and label_efficiency.png."""
    start = time.monotonic()
    meta = read_meta(run_dir)
    pretrained = load_file(str(run_dir / WEIGHTS))
    data = load_segmentation_data(data_path, meta.in_chans, seed=settings.train.seed)
    train = data.train

    def run_one(baseline: str, fraction: float, seed: int) -> tuple[float, int]:
        chosen = labeled_subset(np.arange(len(train)), fraction, seed)
        part = SegmentationSet([train.pairs[i] for i in chosen], train.in_chans, train.encoding)
        torch.manual_seed(seed)
        encoder = None if baseline == "random" else pretrained
        model = build_segmenter(meta, data.encoding.num_classes, encoder)
        config = config_for_init(replace(settings.train, seed=seed), baseline)
        fit_segmenter(model, meta, part, config, settings.device)
        scores = evaluate_segmenter(model, meta, data.test, config.tile, settings.device)
        return scores.miou, len(part)

    recorded = {"run": run_dir.resolve(), "data": data_path.resolve(),
                "settings": asdict(settings)}  # fmt: skip
    journal = SweepJournal(out_dir, recorded)
    curves = run_sweep(plan, settings.baseline, run_one, journal, "mIoU")
    encoder = encoder_schedule(settings.train)
    random = encoder_schedule(config_for_init(settings.train, "random"))
    facts = [
        f"Backbone: `{run_dir}` ({encoder}; random init: {random}); data `{data_path}`.",
        f"Labels: a seeded share of the {len(train)} training images per fraction and seed; "
        f"test: all {len(data.test)} images of the fixed test part (tiled prediction).",
        *sweep_facts(plan, journal, time.monotonic() - start),
    ]
    title = f"Label efficiency: segmentation, {encoder}"
    extra = {"task": "segment", "test_images": len(data.test)}
    return write_sweep_outputs(out_dir, curves, "mIoU", title, facts, extra)
