"""Anchor measurements with torchgeo's own SSL trainer and geospatial loaders.

Everything here is CPU only and never downloads weights (``weights=None``).
Three measurements, each to compare ``domainssl`` against:

* :func:`train_torchgeo_simclr`: time-budgeted :class:`torchgeo.trainers.SimCLRTask`
  training on a folder of RGB chips, returning the backbone for a linear probe.
* :func:`torchgeo_simclr_step_rate`: images/s of one full SimCLRTask training step.
* :func:`torchgeo_window_rate` / :func:`torchgeo_window_timing`: windows/s of
  ``RasterDataset`` + ``RandomGeoSampler`` + ``DataLoader(collate_fn=stack_samples)``.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything
from PIL import Image
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import RandomGeoSampler, Units
from torchgeo.trainers import SimCLRTask

CHIP_SUFFIXES = (".jpg", ".jpeg", ".png")


def torchgeo_preprocess(images_uint8: Tensor) -> Tensor:
    """Scale uint8 RGB ``(..., 3, H, W)`` to float32 in [0, 1], as torchgeo does.

    torchgeo datasets return raw pixel values as float; its ``BaseDataModule``
    then applies ``K.Normalize(mean=0, std=255)``, i.e. divides by 255.
    ``SimCLRTask`` adds no normalisation of its own and its kornia brightness /
    contrast augmentations clamp to [0, 1], so [0, 1] input is what it expects.
    """
    return images_uint8.float().div_(255.0)


def load_chips(chip_dir: Path, max_images: int | None = None, seed: int = 0) -> Tensor:
    """Load every image under ``chip_dir`` (recursively) as a uint8 ``(N, 3, H, W)`` tensor.

    Class subfolders are ignored (labels are not used). With ``max_images``, a
    seeded random subset of that many files is loaded.
    """
    files = sorted(p for p in Path(chip_dir).rglob("*") if p.suffix.lower() in CHIP_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no image chips under {chip_dir}")
    if max_images is not None and max_images < len(files):
        files = sorted(random.Random(seed).sample(files, max_images))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class _ChipDataset(Dataset[dict[str, Tensor]]):
    """In-memory uint8 chips served as torchgeo-style ``{"image": float}`` samples."""

    def __init__(self, chips: Tensor) -> None:
        self.chips = chips

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": torchgeo_preprocess(self.chips[index])}


def _simclr_task(size: int) -> SimCLRTask:
    """SimCLRTask with its defaults, except resnet18, random init and crop ``size``."""
    return SimCLRTask(model="resnet18", weights=None, in_channels=3, size=size)


def train_torchgeo_simclr(
    chip_source: Path | Tensor,
    max_time_s: float,
    batch_size: int = 128,
    size: int = 64,
    num_workers: int = 2,
    seed: int = 0,
    max_images: int | None = None,
) -> nn.Module:
    """Train torchgeo's SimCLRTask on the unlabeled chips for ``max_time_s`` seconds.

    The task keeps all its defaults (SimCLR v2: 3-layer 512-d projection head,
    LARS lr 4.8, momentum 0.9, weight decay 1e-4, NT-Xent temperature 0.07,
    64k memory bank, default augmentations) except ``model="resnet18"``,
    ``weights=None`` and ``size``: the default ``size=224`` would make its
    ``RandomResizedCrop`` upsample 64 px chips to 224 px, so the crop output is
    set to ``size`` (the blur kernel follows from it: 7 px at 64).

    ``max_epochs`` is effectively unbounded so ``max_time`` ends training. The
    task's scheduler is per epoch with a linear warmup over 5 % of
    ``max_epochs``, so within any realistic time budget the learning rate stays
    near the warmup start (lr / 3 = 1.6).

    ``chip_source`` is a folder of chips, loaded into memory once (optionally a
    ``max_images`` subset), or an already loaded uint8 ``(N, 3, H, W)`` tensor; chips are fed as
    ``{"image": torchgeo_preprocess(chip)}``. Returns the timm backbone in eval
    mode: it maps a ``torchgeo_preprocess``-ed ``(B, 3, H, W)`` batch to pooled
    ``(B, 512)`` features.
    """
    seed_everything(seed, workers=True, verbose=False)
    chips = (
        chip_source
        if isinstance(chip_source, Tensor)
        else load_chips(chip_source, max_images=max_images, seed=seed)
    )
    loader = DataLoader(
        _ChipDataset(chips),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(chips) > batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    task = _simclr_task(size)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1_000_000,
        max_time=timedelta(seconds=max_time_s),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=loader)
    backbone: nn.Module = task.backbone
    return backbone.eval()


def torchgeo_simclr_step_rate(images: Tensor, steps: int = 10, warmup: int = 2) -> float:
    """Images/s of SimCLRTask's full training step on ``images`` ``(B, 3, H, W)``, repeated.

    One step is ``task.training_step`` (two kornia augmentation views, backbone and
    projection head forward, NT-Xent loss with memory bank) + backward + the LARS
    optimizer from the task's own ``configure_optimizers``. Counts ``B`` images
    per step; ``warmup`` untimed steps come first. ``images`` should already be
    preprocessed like :func:`torchgeo_preprocess`. Lightning's loop overhead is
    excluded (a Trainer is attached only to build the optimizer).
    """
    task = _simclr_task(images.shape[-1])
    task.trainer = Trainer(accelerator="cpu", devices=1, logger=False)
    config = cast(dict[str, Any], task.configure_optimizers())
    optimizer = cast(Optimizer, config["optimizer"])
    task.trainer = None  # detached: self.log() in training_step becomes a no-op
    task.train()
    batch = {"image": images}

    def step(i: int) -> None:
        optimizer.zero_grad()
        task.training_step(batch, i).backward()
        optimizer.step()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are trying to `self.log")
        for i in range(warmup):
            step(i)
        start = time.perf_counter()
        for i in range(steps):
            step(warmup + i)
        elapsed = time.perf_counter() - start
    return images.shape[0] * steps / elapsed


@dataclass(frozen=True)
class WindowTiming:
    """Result of :func:`torchgeo_window_timing`.

    ``setup_s`` covers RasterDataset + sampler + DataLoader construction;
    ``windows_per_s`` only the iteration that reads ``windows`` windows.
    """

    windows_per_s: float
    setup_s: float
    windows: int
    image_shape: tuple[int, ...]


def torchgeo_window_timing(
    scene: Path, size: int = 64, n: int = 512, batch_size: int = 32, num_workers: int = 0
) -> WindowTiming:
    """Time torchgeo random-window reading of one GeoTIFF, construction and iteration apart.

    Uses a plain ``RasterDataset(paths=[scene])`` (all bands, image key, float32,
    file handles cached), ``RandomGeoSampler(size=size, length=n, units=PIXELS)``
    and ``DataLoader(batch_size, collate_fn=stack_samples, num_workers)``.
    """
    start = time.perf_counter()
    dataset = RasterDataset(paths=[str(scene)])
    sampler = RandomGeoSampler(dataset, size=size, length=n, units=Units.PIXELS)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=stack_samples,
        num_workers=num_workers,
    )
    setup_s = time.perf_counter() - start

    start = time.perf_counter()
    windows = 0
    shape: tuple[int, ...] = ()
    for batch in loader:
        windows += batch["image"].shape[0]
        shape = tuple(batch["image"].shape[1:])
    elapsed = time.perf_counter() - start
    return WindowTiming(windows / elapsed, setup_s, windows, shape)


def torchgeo_window_rate(
    scene: Path, size: int = 64, n: int = 512, batch_size: int = 32, num_workers: int = 0
) -> float:
    """Windows/s of torchgeo ``RasterDataset`` + ``RandomGeoSampler`` on ``scene``.

    Dataset construction is excluded; see :func:`torchgeo_window_timing` for it.
    """
    return torchgeo_window_timing(scene, size, n, batch_size, num_workers).windows_per_s


if __name__ == "__main__":
    data = Path("/work/shared/data")
    t0 = time.perf_counter()
    model = train_torchgeo_simclr(data / "eurosat_rgb5", max_time_s=30.0, max_images=1000)
    print(f"trained SimCLRTask resnet18 for 30 s budget in {time.perf_counter() - t0:.1f} s wall")
    chips = load_chips(data / "eurosat_rgb5", max_images=64, seed=1)
    with torch.no_grad():
        feats = model(torchgeo_preprocess(chips))
    print(
        f"chips {tuple(chips.shape)} {chips.dtype} -> features {tuple(feats.shape)}, "
        f"finite {bool(feats.isfinite().all())}, mean per-dim std {feats.std(0).mean():.4f}"
    )
    rate = torchgeo_simclr_step_rate(torch.rand(64, 3, 64, 64))
    print(f"SimCLRTask step rate, batch 64 @ 64 px: {rate:.1f} images/s")
    for tif in (
        data / "geotiff/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
        data / "geotiff/rgbn.tif",
    ):
        timing = torchgeo_window_timing(tif)
        print(f"{tif.name}: {timing}")
