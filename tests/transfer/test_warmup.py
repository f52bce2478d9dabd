"""The frozen-backbone warm-up: when it ends, and classification fine-tuning with one."""

from pathlib import Path

import torch
from fixtures import write_chip_folder
from torch import nn

from domainssl.data.labeled import load_labeled
from domainssl.transfer.classification.finetune import FinetuneConfig, finetune
from domainssl.transfer.classification.model import Classifier
from domainssl.transfer.warmup import WarmupEnd


def test_the_warmup_ends_at_its_share_of_steps_or_time_whichever_comes_first() -> None:
    by_epochs = WarmupEnd(0.3, epochs=10, max_time_s=None, steps_per_epoch=5)
    assert not by_epochs.reached(14, 1e6) and by_epochs.reached(15, 0.0)
    by_time = WarmupEnd(0.3, epochs=None, max_time_s=100, steps_per_epoch=5)
    assert not by_time.reached(10**6, 29.9) and by_time.reached(0, 30.0)
    both = WarmupEnd(0.3, epochs=10, max_time_s=100, steps_per_epoch=5)
    assert both.reached(15, 0.0) and both.reached(0, 30.0) and not both.reached(14, 29.9)


def test_a_classification_warmup_trains_the_head_alone_first_then_the_backbone(
    tmp_path: Path,
) -> None:
    data = load_labeled(write_chip_folder(tmp_path / "chips", per_class=12), 8, 4)
    inputs = data.images.float() / 1000.0  # (N, 4, 8, 8)
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 8), nn.BatchNorm1d(8), nn.ReLU())
    model = Classifier(backbone, nn.Linear(8, len(data.classes)), multilabel=False)
    seen: list[tuple[bool, bool]] = []  # per training forward: (BN in train mode, has grads)
    backbone.register_forward_pre_hook(
        lambda module, _: (
            seen.append((module.training, module[1].weight.requires_grad))
            if torch.is_grad_enabled()  # not the validation passes
            else None
        )
    )
    config = FinetuneConfig(epochs=2, batch_size=8, frozen_warmup=0.5)
    finetune(model, inputs, data, config)
    steps = len(seen)
    assert steps == 2 * (len(data.split.train) // 8)
    assert seen == [(False, False)] * (steps // 2) + [(True, True)] * (steps // 2)
