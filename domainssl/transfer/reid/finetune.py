"""Supervised cross-modality fine-tuning with the AGW baseline (Ye et al. 2021, "Deep
Learning for Person Re-identification: A Survey and Outlook"; code mangye16/Cross-Modal-
Re-ID-baseline), the recipe RGB-IR re-ID papers (MMGL among them) report after pretraining.

* Batches of P identities x K images of each modality (:class:`IdentityBalancedSampler`).
* Loss: identity cross-entropy on the BNNeck's classifier + the weighted regularized triplet
  on the GeM-pooled features. Label smoothing (0.1) follows the AGW description in the
  survey; the cross-modality code uses plain cross-entropy (``label_smoothing=0`` for that).
* SGD (momentum 0.9, Nesterov, weight decay 5e-4): new layers at ``lr`` (0.1), the
  pretrained backbone at a tenth; linear warmup over the first 10 of 80 epochs, x0.1 at
  20, x0.01 at 50 (AGW's schedule), stretched over ``--epochs`` or ``--max-time``.
* Augmentation (AGW): 10-px zero-padded random crop, horizontal flip, random erasing.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from domainssl.data.reid import IdentityBalancedSampler, PersonImage, PersonImages
from domainssl.data.samplers import Shard
from domainssl.data.seeds import stream_seed
from domainssl.export import BackboneMeta, preprocess
from domainssl.losses.weighted_triplet import WeightedRegularizedTriplet
from domainssl.transfer.processes import rank_zero_value, replicate, worker_device
from domainssl.transfer.reid.network import ReidNet


@dataclass
class ReidFinetuneConfig:
    """The AGW recipe's settings (defaults as in its released code, except where noted)."""

    epochs: int | None = 10
    """None: train until ``max_time_s`` is spent (AGW: 80 epochs on SYSU-MM01)."""
    max_time_s: float | None = None
    identities: int = 8
    """P: identities per batch."""
    images: int = 4
    """K: images of each modality per identity (a batch holds 2PK images)."""
    lr: float = 0.1
    backbone_lr_scale: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    non_local: bool = False
    seed: int = 0
    devices: int = 1
    num_workers: int = 0


def agw_lr_factor(progress: float) -> float:
    """AGW's schedule over 80 epochs as a share of the run: warmup from 0.1 to 1 over the
    first 12.5%, then 1 until 25%, 0.1 until 62.5%, 0.01 after."""
    if progress < 0.125:
        return 0.1 + 0.9 * progress / 0.125
    return 1.0 if progress < 0.25 else 0.1 if progress < 0.625 else 0.01


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image: 10-px zero-padded random crop, horizontal flip, and (with p = 0.5) random
    erasing of a rectangle of 2-40% of the area with aspect 0.3-3.3 (Zhong et al. 2020)."""
    count, _, height, width = images.shape
    padded = F.pad(images, (10, 10, 10, 10))
    out = torch.empty_like(images)
    for index in range(count):
        top, left = (int(v) for v in torch.randint(0, 21, (2,), generator=generator))
        image = padded[index, :, top : top + height, left : left + width]
        if torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        out[index] = image
        if torch.rand((), generator=generator) < 0.5:
            area = height * width * float(torch.empty(()).uniform_(0.02, 0.4, generator=generator))
            aspect = math.exp(float(torch.empty(()).uniform_(math.log(0.3), math.log(3.3),
                                                             generator=generator)))  # fmt: skip
            h = min(round(math.sqrt(area * aspect)), height)
            w = min(round(math.sqrt(area / aspect)), width)
            y = int(torch.randint(0, height - h + 1, (), generator=generator))
            x = int(torch.randint(0, width - w + 1, (), generator=generator))
            out[index, :, y : y + h, x : x + w] = 0.0  # the normalized mean
    return out


def train_reid(
    network: ReidNet,
    images: list[PersonImage],
    meta: BackboneMeta,
    size: tuple[int, int],
    config: ReidFinetuneConfig,
    shard: Shard,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One process's fine-tune: each process draws its own P x K batches (seeded by rank);
    gradients are averaged over processes. Returns the weights and a training summary."""
    device = next(network.parameters()).device if shard.world == 1 else worker_device()
    seed = stream_seed(config.seed, shard.rank)
    torch.manual_seed(seed)
    labels = {pid: label for label, pid in enumerate(sorted({item.pid for item in images}))}
    sampler = IdentityBalancedSampler(images, config.identities, config.images, seed)
    loader = DataLoader(PersonImages(images, size), batch_sampler=sampler,
                        num_workers=config.num_workers)  # fmt: skip
    forward = replicate(network, shard, device)
    new = [*network.neck.parameters(), *network.classifier.parameters()]
    new_ids = {id(p) for p in new}
    pretrained = [p for p in network.parameters() if id(p) not in new_ids]
    groups = [{"params": pretrained, "lr": config.lr * config.backbone_lr_scale},
              {"params": [p for p in new if p.requires_grad], "lr": config.lr}]  # fmt: skip
    optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay)  # fmt: skip
    peaks = [group["lr"] for group in optimizer.param_groups]
    triplet, generator = WeightedRegularizedTriplet(), torch.Generator().manual_seed(seed)
    total = None if config.epochs is None else config.epochs * len(sampler)
    start, step, over, epoch_losses = time.monotonic(), 0, False, []
    for _ in range(config.epochs) if config.epochs is not None else itertools.count():
        network.train()
        losses = []
        for batch in loader:
            elapsed = rank_zero_value(time.monotonic() - start, device)
            shares = [step / total] if total else []
            shares += [elapsed / config.max_time_s] if config.max_time_s else []
            over = config.max_time_s is not None and elapsed > config.max_time_s
            if over:
                break
            for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                group["lr"] = peak * agw_lr_factor(min(max(shares, default=0.0), 1.0))
            inputs = augment(preprocess(meta, batch["image"]), generator).to(device)
            target = torch.tensor([labels[int(pid)] for pid in batch["pid"]], device=device)
            pooled, logits = forward(inputs, batch["modality"].to(device))
            loss = F.cross_entropy(logits, target, label_smoothing=config.label_smoothing)
            loss = loss + triplet(pooled, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
        if losses:
            epoch_losses.append(sum(losses) / len(losses))
        if over:
            break
    state = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    summary = {
        "epochs": len(epoch_losses),
        "steps": step,
        "stopped_by_time": over,
        "epoch_losses": epoch_losses,
        "identities": len(labels),
        "images": len(images),
        "batch": 2 * config.identities * config.images,
    }
    return state, summary
