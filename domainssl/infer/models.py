"""What ``domainssl infer`` runs: a segmentation or classification transfer folder, or a
pretrain run (embeddings), read cheaply first (metadata) and loaded second (weights)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.export import METADATA, WEIGHTS, BackboneMeta, load_backbone, read_meta
from domainssl.models.inference import for_inference
from domainssl.transfer.classification.model import Classifier, load_classifier
from domainssl.transfer.outputs import MODEL_METADATA
from domainssl.transfer.segmentation.model import Segmenter, load_segmenter

Task = Literal["segment", "classify", "embed"]


@dataclass(frozen=True)
class ModelSpec:
    """The model's task, backbone metadata, output band names and default tile (px)."""

    task: Task
    meta: BackboneMeta
    band_names: list[str]
    """Classes (segment, classify) or embedding dimensions (embed)."""
    default_tile: int
    """Segment: the training tile; classify / embed: the size the backbone was trained on."""


def read_model_spec(model_dir: Path) -> ModelSpec:
    """The spec of ``model_dir`` from its JSON metadata alone (no weights are read)."""
    if (model_dir / MODEL_METADATA).is_file():
        info: dict[str, Any] = json.loads((model_dir / MODEL_METADATA).read_text())
        meta = BackboneMeta(**info["backbone"])
        if info.get("task") == "segment":
            names = [f"class_{k}" for k in range(info["num_classes"])]
            return ModelSpec("segment", meta, names, int(info["tile"]))
        if info.get("task") == "classify":
            return ModelSpec("classify", meta, list(info["classes"]), meta.input_size)
        raise DomainSSLError(
            f"{model_dir / MODEL_METADATA} has task {info.get('task')!r}; infer runs "
            "'segment' and 'classify' models: give a `domainssl transfer` output folder."
        )
    if (model_dir / METADATA).is_file():
        meta = read_meta(model_dir)
        names = [f"embedding_{i}" for i in range(meta.feature_dim)]
        return ModelSpec("embed", meta, names, meta.input_size)
    raise DomainSSLError(
        f"{model_dir} holds neither a transferred model ({MODEL_METADATA}) nor an exported "
        f"backbone ({WEIGHTS} + {METADATA}): give the folder of a `domainssl transfer` or "
        "`domainssl pretrain` run."
    )


class SegmentProbabilities(nn.Module):
    """A segmenter's per-pixel class probabilities (B, K, H, W)."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter(images).float().softmax(dim=1)


class ClassScores(nn.Module):
    """A classifier's class probabilities (B, K) (softmax, sigmoid or k-NN vote shares)."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.scores(images).float()


def load_network(model_dir: Path, spec: ModelSpec) -> nn.Module:
    """The network (eval mode, prepared for inference) mapping preprocessed tiles
    (B, C, T, T) to class probabilities (B, K, T, T) (segment) or (B, K) (classify), or to
    embeddings (B, D) (embed)."""
    if spec.task == "segment":
        return for_inference(SegmentProbabilities(load_segmenter(model_dir)[0]))
    if spec.task == "classify":
        return for_inference(ClassScores(load_classifier(model_dir)[0]))
    return for_inference(load_backbone(model_dir)[0])
