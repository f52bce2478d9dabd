"""Fine-tuning the whole network: a linear head on the backbone, lower backbone LR."""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from domainssl.data.labeled import LabeledSet
from domainssl.data.samplers import Shard
from domainssl.transfer.classification.metrics import score
from domainssl.transfer.classification.model import Classifier
from domainssl.transfer.processes import (
    rank_zero_value,
    replicate,
    train_on_devices,
    worker_device,
)
from domainssl.transfer.warmup import WarmupEnd, unfreeze


@dataclass
class FinetuneConfig:
    """Optimisation of a fine-tune (AdamW, cosine decay, flips and 90-degree rotations)."""

    epochs: int | None = 10
    """None: train until ``max_time_s`` is spent."""
    max_time_s: float | None = None
    """Stop after this many seconds (the best model so far is kept and evaluated); the
    cosine schedule ends with whichever of the two limits ends first."""
    batch_size: int = 64
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    """The pretrained backbone learns this many times slower than the new head; see
    :func:`config_for_init` for random init."""
    frozen_warmup: float = 0.0
    """Share of the budget that trains the head on the frozen backbone before everything is
    fine-tuned (:mod:`domainssl.transfer.warmup`)."""
    weight_decay: float = 1e-4
    seed: int = 0
    devices: int = 1
    """Processes (one per CUDA device, or CPU processes) training DDP replicas."""


def config_for_init(config: FinetuneConfig, baseline: str) -> FinetuneConfig:
    """A random-init backbone has nothing to preserve: it learns at the head's full rate from
    the first step (no frozen warm-up)."""
    if baseline != "random":
        return config
    return replace(config, backbone_lr_scale=1.0, frozen_warmup=0.0)


def flip_rotate(images: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and 90-degree rotation per batch (square images)."""
    if torch.rand(()) < 0.5:
        images = images.flip(-1)
    return torch.rot90(images, int(torch.randint(4, ())), dims=(-2, -1))


def finetune(
    model: Classifier, inputs: torch.Tensor, data: LabeledSet, config: FinetuneConfig
) -> float:
    """Train ``model`` on preprocessed ``inputs`` (N, C, S, S) of ``data``'s train part;
    keeps the weights of the epoch with the best validation score and returns that score.
    With ``config.devices`` > 1, one DDP process per device trains it."""
    device = next(model.parameters()).device
    args = (inputs, data, config)
    state, best = train_on_devices(train_classifier, model, args, config.devices, device)
    model.load_state_dict(state)
    return float(best)


def train_classifier(
    model: Classifier, inputs: torch.Tensor, data: LabeledSet, config: FinetuneConfig, shard: Shard
) -> tuple[dict[str, torch.Tensor], float]:
    """One process's part of :func:`finetune`: the best weights and their validation score
    (rank 0's; every process draws the same batches and trains on its share of each)."""
    device = next(model.parameters()).device if shard.world == 1 else worker_device()
    frozen = config.frozen_warmup > 0
    model.backbone.requires_grad_(not frozen)
    forward = replicate(model, shard, device)
    torch.manual_seed(config.seed)  # after DDP's set-up, which draws random numbers
    groups = [
        {"params": model.backbone.parameters(), "lr": config.lr * config.backbone_lr_scale},
        {"params": model.head.parameters(), "lr": config.lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    train = torch.from_numpy(data.split.train)
    steps_per_epoch = max(len(train) // config.batch_size, 1)
    total_steps = None if config.epochs is None else config.epochs * steps_per_epoch
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    multilabel = data.multilabel
    best = (-1.0, copy.deepcopy(model.state_dict()))
    warmup = WarmupEnd(config.frozen_warmup, config.epochs, config.max_time_s, steps_per_epoch)
    start, done, over = time.monotonic(), 0, False
    for _ in range(config.epochs) if config.epochs is not None else itertools.count():
        model.train()
        if frozen:
            model.backbone.eval()  # keep the pretrained BatchNorm statistics
        order = train[torch.randperm(len(train))]
        for step in range(steps_per_epoch):
            elapsed = rank_zero_value(time.monotonic() - start, device)  # one clock decides
            if frozen and warmup.reached(done, elapsed):
                frozen, forward = False, unfreeze(model.backbone, model, shard, device)
            factor = cosine_factor(done, total_steps, elapsed, config.max_time_s)
            for group, peak in zip(optimizer.param_groups, peak_lrs, strict=True):
                group["lr"] = peak * factor
            over = config.max_time_s is not None and elapsed > config.max_time_s
            if over:
                break
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            mine = batch[shard.rank :: shard.world]  # this process's share
            logits = forward(flip_rotate(inputs[mine].to(device)))
            target = data.targets[mine].to(device)
            loss = (
                F.binary_cross_entropy_with_logits(logits, target)
                if multilabel
                else F.cross_entropy(logits, target)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
        if shard.rank == 0:
            val_score = score(predict(model, inputs[data.split.val]), data.targets[data.split.val])
            if val_score > best[0]:
                best = (val_score, copy.deepcopy(model.state_dict()))
        if over:
            break
    return best[1], best[0]


def cosine_factor(
    step: int, total_steps: int | None, elapsed: float, max_time_s: float | None
) -> float:
    """Cosine decay from 1 to 0 over the run's progress: the larger of the step share and
    the time share, so that the schedule ends with whichever limit ends first."""
    shares = [step / total_steps] if total_steps else []
    shares += [elapsed / max_time_s] if max_time_s else []
    return 0.5 * (1 + math.cos(math.pi * min(max(shares, default=0.0), 1.0)))


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Model outputs (N, K) on CPU, in eval mode."""
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    chunks = [
        model(inputs[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    return torch.cat(chunks)
