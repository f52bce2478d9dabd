"""`domainssl transfer --task classify`: linear probe, k-NN or fine-tune, with a report."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from domainssl.data.labeled import PARTS, LabeledSet, load_labeled
from domainssl.export import BackboneMeta, backbone_for, load_backbone, preprocess
from domainssl.io import atomic_write_text
from domainssl.models.knn import KNNHead
from domainssl.transfer.classification.finetune import (
    FinetuneConfig,
    config_for_init,
    finetune,
    predict,
)
from domainssl.transfer.classification.metrics import classification_metrics, score
from domainssl.transfer.classification.model import Classifier
from domainssl.transfer.classification.probe import fit_linear_head
from domainssl.transfer.classification.report import save_confusion_png, write_classify_report
from domainssl.transfer.outputs import save_transfer_model


@dataclass
class ClassifySettings:
    """How to transfer: protocol, baseline and their knobs."""

    protocol: Literal["linear", "knn", "finetune"] = "linear"
    baseline: Literal["pretrained", "random"] = "pretrained"
    """``random``: the same protocol on a randomly initialised backbone of the same architecture."""
    k: int = 20
    temperature: float = 0.07
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    device: str = "cpu"
    seed: int = 0


def transfer_classify(
    run_dir: Path, data_path: Path, out_dir: Path, settings: ClassifySettings
) -> dict[str, Any]:
    """Transfer the backbone of ``run_dir`` to the labeled set; write the model and report."""
    start = time.monotonic()
    settings = replace(settings, finetune=config_for_init(settings.finetune, settings.baseline))
    torch.manual_seed(settings.seed)
    backbone, meta = load_backbone(run_dir)
    if settings.baseline == "random":
        backbone = backbone_for(meta)
    data = load_labeled(data_path, meta.input_size, meta.in_chans, settings.seed)
    inputs = preprocess(meta, data.images)  # (N, C, S, S)
    backbone = backbone.to(settings.device)
    classes = len(data.classes)
    if settings.protocol == "finetune":
        head: nn.Module = nn.Linear(meta.feature_dim, classes)
        model = Classifier(backbone, head, data.multilabel).to(settings.device)
        val_score = finetune(model, inputs, data, settings.finetune)
    else:
        features = embed(backbone, inputs)  # (N, D)
        split = data.split
        if settings.protocol == "linear":
            head, val_score, _ = fit_linear_head(features, data.targets, split, score)
        else:
            val_head = KNNHead(features[split.train], data.targets[split.train], classes)
            val_score = score(val_head(features[split.val]), data.targets[split.val])
            bank = np.concatenate([split.train, split.val])
            head = KNNHead(features[bank], data.targets[bank], classes, settings.k)
        model = Classifier(backbone, head, data.multilabel).to(settings.device)
    test = data.split.test
    metrics = classification_metrics(predict(model, inputs[test]), data.targets[test], data.classes)
    metrics.update(
        protocol=settings.protocol,
        baseline=settings.baseline,
        validation_score=val_score,
        seconds=round(time.monotonic() - start, 1),
    )
    write_outputs(model, meta, data, settings, metrics, run_dir, data_path, out_dir)
    return metrics


@torch.no_grad()
def embed(backbone: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Pooled features (N, D) on CPU of preprocessed images (N, C, S, S)."""
    backbone.eval()
    device = next(backbone.parameters()).device
    chunks = [
        backbone(inputs[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    return torch.cat(chunks)


def write_outputs(
    model: Classifier,
    meta: BackboneMeta,
    data: LabeledSet,
    settings: ClassifySettings,
    metrics: dict[str, Any],
    run_dir: Path,
    data_path: Path,
    out_dir: Path,
) -> None:
    """Model (weights + metadata for infer), metrics.json, split.json, confusion PNG, report."""
    head = model.head
    head_info = (
        {"kind": "knn", "bank_size": len(head.bank), "k": head.k, "temperature": head.temperature}
        if isinstance(head, KNNHead)
        else {"kind": "linear"}
    )
    info = {
        "task": "classify",
        "classes": data.classes,
        "multilabel": data.multilabel,
        "head": head_info,
        "settings": asdict(settings),
        "pretrain_run": str(run_dir),
        "backbone": asdict(meta),
    }
    save_transfer_model(model, info, out_dir)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    parts = dict(zip(PARTS, (data.split.train, data.split.val, data.split.test), strict=True))
    split = {name: [data.files[i] for i in index] for name, index in parts.items()}
    split_info = {"given": data.split_given, "seed": settings.seed, **split}
    atomic_write_text(out_dir / "split.json", json.dumps(split_info, indent=2))
    if "confusion_matrix" in metrics:
        save_confusion_png(metrics["confusion_matrix"], data.classes, out_dir / "confusion.png")
    write_classify_report(out_dir / "report.md", metrics, data, run_dir, data_path)
