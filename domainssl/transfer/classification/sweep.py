"""Classification transfer over label fractions and seeds (see
:mod:`domainssl.transfer.label_efficiency`): the labeled set is read and preprocessed once;
each (init, fraction, seed) keeps that share of the train and validation parts (stratified,
drawn with the seed), trains with the seed and is scored on the whole, fixed test part.
Frozen-feature protocols embed once per backbone."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainssl.data.labeled import LabeledSet, ProbeSplit, load_labeled, stratify_key
from domainssl.export import backbone_for, load_backbone, preprocess
from domainssl.models.knn import KNNHead
from domainssl.transfer.classification.finetune import config_for_init, finetune, predict
from domainssl.transfer.classification.metrics import score
from domainssl.transfer.classification.model import Classifier
from domainssl.transfer.classification.probe import fit_linear_head
from domainssl.transfer.classification.transfer import ClassifySettings, embed
from domainssl.transfer.label_efficiency import (
    SweepJournal,
    SweepPlan,
    labeled_subset,
    run_sweep,
    sweep_facts,
    write_sweep_outputs,
)


def subset_split(data: LabeledSet, fraction: float, seed: int) -> ProbeSplit:
    """``fraction`` of the train and of the validation part, stratified; test unchanged."""
    key = stratify_key(data.targets)
    split = data.split
    train = labeled_subset(split.train, fraction, seed, key[split.train])
    val = labeled_subset(split.val, fraction, seed, key[split.val])
    return ProbeSplit(train, val, split.test)


def warmup_text(settings: ClassifySettings) -> str:
    """The frozen warm-up of a pretrained fine-tune, in words ("" without one)."""
    share = settings.finetune.frozen_warmup
    if settings.protocol != "finetune" or not share:
        return ""
    return f" (pretrained: backbone frozen for the first {share:.0%} of the budget)"


def transfer_classify_sweep(
    run_dir: Path, data_path: Path, out_dir: Path, settings: ClassifySettings, plan: SweepPlan
) -> dict[str, Any]:
    """Run the plan; write metrics.json, report.md and label_efficiency.png."""
    start = time.monotonic()
    pretrained, meta = load_backbone(run_dir)
    data = load_labeled(data_path, meta.input_size, meta.in_chans, settings.seed)
    inputs = preprocess(meta, data.images)  # (N, C, S, S)
    features: dict[tuple[str, int], torch.Tensor] = {}

    def backbone_of(baseline: str, seed: int) -> nn.Module:
        if baseline == "random":
            torch.manual_seed(seed)
            return backbone_for(meta)
        return copy.deepcopy(pretrained)

    def run_one(baseline: str, fraction: float, seed: int) -> tuple[float, int]:
        split = subset_split(data, fraction, seed)
        part = replace(data, split=split)
        classes = len(data.classes)
        if settings.protocol == "finetune":
            backbone = backbone_of(baseline, seed).to(settings.device)
            torch.manual_seed(seed)
            model = Classifier(backbone, nn.Linear(meta.feature_dim, classes), data.multilabel)
            config = config_for_init(replace(settings.finetune, seed=seed), baseline)
            finetune(model.to(settings.device), inputs, part, config)
            outputs = predict(model, inputs[split.test])
        else:
            key = (baseline, seed if baseline == "random" else 0)  # pretrained: embed once
            if key not in features:
                features[key] = embed(backbone_of(baseline, seed).to(settings.device), inputs)
            x = features[key]
            head: nn.Module
            if settings.protocol == "linear":
                head, _, _ = fit_linear_head(x, data.targets, split, score)
            else:
                bank = np.concatenate([split.train, split.val])
                head = KNNHead(x[bank], data.targets[bank], classes, settings.k,
                               settings.temperature)  # fmt: skip
            with torch.no_grad():
                outputs = head(x[split.test])
        labels = len(split.train) + len(split.val)
        return score(outputs, data.targets[split.test]), labels

    metric = "mAP" if data.multilabel else "accuracy"
    recorded = {"run": run_dir.resolve(), "data": data_path.resolve(),
                "settings": asdict(settings)}  # fmt: skip
    journal = SweepJournal(out_dir, recorded)
    curves = run_sweep(plan, settings.baseline, run_one, journal, metric)
    facts = [
        f"Backbone: `{run_dir}`; protocol {settings.protocol}{warmup_text(settings)}; data "
        f"`{data_path}`, {len(data.classes)} classes.",
        f"Labels: a stratified share of the train ({len(data.split.train)}) and validation "
        f"({len(data.split.val)}) parts per fraction and seed; test: all "
        f"{len(data.split.test)} images of the fixed test part.",
        *sweep_facts(plan, journal, time.monotonic() - start),
    ]
    title = f"Label efficiency: classification, {settings.protocol}"
    extra = {"task": "classify", "protocol": settings.protocol, "test_images": len(data.split.test)}
    return write_sweep_outputs(out_dir, curves, metric, title, facts, extra)
