"""Semantic segmentation on a pretrained backbone: fine-tuning on random tiles, prediction
and evaluation over whole images tile by tile."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from domainssl.data.samplers import Shard
from domainssl.data.seeds import stream_seed
from domainssl.export import BackboneMeta, preprocess
from domainssl.transfer.processes import (
    global_sum,
    rank_zero_decides,
    replicate,
    train_on_devices,
    worker_device,
)
from domainssl.transfer.segmentation.data import Sample, SegmentationSet
from domainssl.transfer.segmentation.metrics import (
    SegmentationMetrics,
    confusion_matrix,
    metrics_from_confusion,
)
from domainssl.transfer.segmentation.model import Segmenter
from domainssl.transfer.warmup import WarmupEnd, unfreeze


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, else the GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_tile(
    image: torch.Tensor, mask: torch.Tensor, tile: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``tile`` px crop with random flips / 90-degree turns; small images are padded
    (0 in the image, ``ignore_index`` in the mask)."""
    height, width = mask.shape
    pad_h, pad_w = max(tile - height, 0), max(tile - width, 0)
    image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)  # (C, >=tile, >=tile)
    mask = F.pad(mask, (0, pad_w, 0, pad_h), value=ignore_index)  # (>=tile, >=tile)
    top = int(torch.randint(mask.shape[0] - tile + 1, ()))
    left = int(torch.randint(mask.shape[1] - tile + 1, ()))
    image = image[:, top : top + tile, left : left + tile]  # (C, tile, tile)
    mask = mask[top : top + tile, left : left + tile]  # (tile, tile)
    if torch.rand(()) < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    turns = int(torch.randint(4, ()))  # overhead and slide imagery have no "up"
    return image.rot90(turns, (-2, -1)), mask.rot90(turns, (-2, -1))


class TrainingTiles(Dataset[Sample]):
    """Random augmented tiles, one per image of ``source`` per epoch, and at least
    ``min_tiles`` (the images taken in turn), so that a set of one to a few images still
    fills whole batches instead of training on batches of one tile."""

    def __init__(self, source: SegmentationSet, tile: int, min_tiles: int = 1) -> None:
        self.source, self.tile, self.min_tiles = source, tile, min_tiles

    def __len__(self) -> int:
        return max(len(self.source), self.min_tiles)

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index % len(self.source)]
        ignore = self.source.encoding.ignore_index
        image, mask = random_tile(sample["image"], sample["mask"], self.tile, ignore)
        return {"image": image.contiguous(), "mask": mask.contiguous()}


@dataclass
class SegmentTrainConfig:
    """Fine-tuning settings; the ignore index comes from the data set's label encoding."""

    tile: int = 256
    epochs: int | None = 20
    """None: train until ``max_time_s`` is spent."""
    max_time_s: float | None = None
    """Stop after the step that crosses this wall time (the model stays usable)."""
    batch_size: int = 8
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    """The pretrained encoder learns at ``lr`` times this (the new decoder at ``lr``); see
    :func:`config_for_init` for random init."""
    freeze_encoder: bool = False
    frozen_warmup: float = 0.0
    """Share of the budget (epochs' steps or ``max_time_s``, whichever ends first) that trains
    the decoder on a frozen encoder before everything is fine-tuned (:mod:`..warmup`)."""
    weight_decay: float = 1e-4
    seed: int = 0
    num_workers: int = 0
    devices: int = 1
    """Processes (one per CUDA device, or CPU processes) training DDP replicas."""


def config_for_init(config: SegmentTrainConfig, baseline: str) -> SegmentTrainConfig:
    """A random-init encoder has nothing to preserve: it learns at the decoder's full rate
    from the first step (no frozen warm-up)."""
    if baseline != "random":
        return config
    return replace(config, encoder_lr_scale=1.0, frozen_warmup=0.0)


@dataclass
class FitSummary:
    """Mean loss per epoch run, optimizer steps taken, whether the time limit ended it."""

    epoch_losses: list[float]
    steps: int
    stopped_by_time: bool


def encoder_schedule(config: SegmentTrainConfig) -> str:
    """How the encoder trains, in words: frozen, fine-tuned, or fine-tuned after a warm-up."""
    if config.freeze_encoder:
        return "frozen encoder"
    if config.frozen_warmup > 0:
        share = f"{config.frozen_warmup:.0%}"
        return f"encoder frozen for the first {share} of the budget, then fine-tuned"
    return "fine-tuned encoder"


def _optimizer(model: Segmenter, config: SegmentTrainConfig) -> torch.optim.Optimizer:
    """AdamW: the decoder at ``lr``, the encoder at ``lr * encoder_lr_scale`` or frozen."""
    encoder = list(model.encoder.parameters())
    encoder_ids = {id(p) for p in encoder}
    decoder = [p for p in model.parameters() if id(p) not in encoder_ids]
    groups: list[dict[str, Any]] = [{"params": decoder}]
    if not config.freeze_encoder:
        groups.append({"params": encoder, "lr": config.lr * config.encoder_lr_scale})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def fit_segmenter(
    model: Segmenter,
    meta: BackboneMeta,
    train_set: SegmentationSet,
    config: SegmentTrainConfig,
    device: str | torch.device | None = None,
) -> FitSummary:
    """Cross-entropy fine-tuning on random augmented tiles (ignored pixels excluded); with
    ``config.devices`` > 1, one DDP process per device trains it."""
    args = (meta, train_set, config)
    state, summary = train_on_devices(
        train_segmenter, model, args, config.devices, resolve_device(device)
    )
    model.load_state_dict(state)
    return FitSummary(**summary)


def train_segmenter(
    model: Segmenter,
    meta: BackboneMeta,
    train_set: SegmentationSet,
    config: SegmentTrainConfig,
    shard: Shard,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One process's part of :func:`fit_segmenter`: the weights and a summary (as a dict).

    Each process draws its own random tiles of its share of the images; a batch where no
    process has a labelled pixel is skipped by all of them together."""
    target = next(model.parameters()).device if shard.world == 1 else worker_device()
    torch.manual_seed(stream_seed(config.seed, shard.rank) if shard.world > 1 else config.seed)
    frozen = config.freeze_encoder or config.frozen_warmup > 0
    model.encoder.requires_grad_(not frozen)
    forward = replicate(model, shard, target)
    optimizer = _optimizer(model, config)
    tiles = TrainingTiles(train_set, config.tile, min_tiles=config.batch_size * shard.world)
    share = len(tiles) // shard.world
    sampler: DistributedSampler | None = None
    if shard.world > 1:
        sampler = DistributedSampler(tiles, shard.world, shard.rank, seed=config.seed)
    loader = DataLoader(
        tiles,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=share > config.batch_size,  # no 1-sample batch for BatchNorm
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=target.type == "cuda",
    )
    ignore = train_set.encoding.ignore_index
    warmup = WarmupEnd(config.frozen_warmup, config.epochs, config.max_time_s, len(loader))
    start, steps, losses, out_of_time = time.monotonic(), 0, [], False
    for epoch in range(config.epochs) if config.epochs is not None else itertools.count():
        model.train()
        if frozen:
            model.encoder.eval()  # keep the pretrained BatchNorm statistics
        if sampler is not None:
            sampler.set_epoch(epoch)
        total, batches, out_of_time = 0.0, 0, False
        for batch in loader:
            warming = frozen and not config.freeze_encoder
            elapsed = time.monotonic() - start
            if warming and rank_zero_decides(warmup.reached(steps, elapsed), target):
                frozen, forward = False, unfreeze(model.encoder, model, shard, target)
            masks = batch["mask"].to(target, non_blocking=True)  # (B, T, T)
            labelled = float((masks != ignore).sum())
            if global_sum(labelled, target) == 0:
                continue
            images = preprocess(meta, batch["image"].to(target, non_blocking=True))  # (B, C, T, T)
            pixel_losses = F.cross_entropy(
                forward(images), masks, ignore_index=ignore, reduction="sum"
            )
            loss = pixel_losses / max(labelled, 1.0)  # mean over labelled pixels (0 if none)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches, steps = total + float(loss.detach()), batches + 1, steps + 1
            over = config.max_time_s is not None and time.monotonic() - start > config.max_time_s
            out_of_time = rank_zero_decides(over, target)
            if out_of_time:
                break
        losses.append(total / batches if batches else float("nan"))
        if out_of_time:
            break
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return state, asdict(FitSummary(losses, steps, stopped_by_time=out_of_time))


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window offsets along one axis of ``length`` >= ``tile``; the last one ends at the border."""
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    meta: BackboneMeta,
    image: torch.Tensor,
    tile: int,
    stride: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Logits (K, H, W) of a whole raw image (C, H, W), averaged over overlapping tiles.

    Tiles step by ``stride`` (default ``tile // 2``), the last tile of a row/column is
    aligned to the border; an image smaller than a tile is padded as in training.
    The model is left in eval mode.
    """
    target = resolve_device(device)
    model.eval().to(target)
    height, width = image.shape[-2:]
    padded = F.pad(image, (0, max(tile - width, 0), 0, max(tile - height, 0)))  # (C, Hp, Wp)
    normalized = preprocess(meta, padded[None].to(target))[0]  # (C, Hp, Wp)
    step = stride or max(tile // 2, 1)
    windows = [
        (top, left)
        for top in tile_starts(normalized.shape[1], tile, step)
        for left in tile_starts(normalized.shape[2], tile, step)
    ]
    sums: torch.Tensor | None = None
    counts = torch.zeros(1, *normalized.shape[1:], device=target)  # (1, Hp, Wp)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        batch = torch.stack([normalized[:, t : t + tile, c : c + tile] for t, c in chunk])
        logits = model(batch).float()  # (b, K, tile, tile)
        if sums is None:
            sums = torch.zeros(logits.shape[1], *normalized.shape[1:], device=target)
        for (top, left), window in zip(chunk, logits, strict=True):
            sums[:, top : top + tile, left : left + tile] += window
            counts[:, top : top + tile, left : left + tile] += 1
    assert sums is not None  # at least one window
    return (sums / counts)[:, :height, :width].cpu()


def evaluate_segmenter(
    model: nn.Module,
    meta: BackboneMeta,
    test_set: SegmentationSet,
    tile: int,
    device: str | torch.device | None = None,
) -> SegmentationMetrics:
    """Scores over every whole test image (tiled prediction), ignored pixels left out."""
    classes, ignore = test_set.encoding.num_classes, test_set.encoding.ignore_index
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for index in range(len(test_set)):
        sample = test_set[index]
        prediction = predict_logits(model, meta, sample["image"], tile, device=device).argmax(0)
        confusion += confusion_matrix(sample["mask"].numpy(), prediction.numpy(), classes, ignore)
    return metrics_from_confusion(confusion)
