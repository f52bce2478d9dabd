"""The classifier a classification transfer trains and `domainssl infer` runs: backbone +
head (linear or k-NN), and how it is loaded from a transfer output folder. Light on imports
(no training code), so the commands that only run models start fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from domainssl.export import BackboneMeta, backbone_for
from domainssl.models.knn import KNNHead
from domainssl.transfer.outputs import read_transfer_output


class Classifier(nn.Module):
    """Backbone + head on preprocessed images: what ``domainssl infer`` runs."""

    def __init__(self, backbone: nn.Module, head: nn.Module, multilabel: bool) -> None:
        super().__init__()
        self.backbone, self.head, self.multilabel = backbone, head, multilabel

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of a linear head; vote shares of a k-NN head."""
        return self.head(self.backbone(images))

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K): softmax, or per-class sigmoid for multi-label."""
        outputs = self(images)
        if isinstance(self.head, KNNHead):
            return outputs
        return outputs.sigmoid() if self.multilabel else outputs.softmax(dim=1)


def load_classifier(model_dir: Path) -> tuple[Classifier, BackboneMeta, dict[str, Any]]:
    """A transfer output folder as (model in eval mode, backbone metadata, model.json)."""
    info, meta, state = read_transfer_output(model_dir, "domainssl transfer")
    backbone = backbone_for(meta)
    classes = len(info["classes"])
    head: nn.Module
    if info["head"]["kind"] == "knn":
        bank, votes = state["head.bank"], state["head.votes"]
        targets = votes if info["multilabel"] else votes.argmax(1)
        head = KNNHead(bank, targets, classes, info["head"]["k"], info["head"]["temperature"])
    else:
        head = nn.Linear(meta.feature_dim, classes)
    model = Classifier(backbone, head, info["multilabel"])
    model.load_state_dict(state)
    return model.eval(), meta, info
