"""Throughput measurements of the GPU check (bench/gpu_check.py), each in this process.

- training step images/s: our SimCLR step (views made on the device + forward + loss +
  backward + LARS step) and the same model on pre-made views, against lightly's SimCLR
  (SimCLRProjectionHead + NTXentLoss + lightly's LARS) on the same backbone, batch, views
  and precision;
- achieved model TFLOP/s of our step (FLOPs counted by torch's FlopCounterMode);
- data-loader-only samples/s per worker process for chips, scene windows and slide patches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from domainssl.config import RunConfig
from domainssl.methods.simclr import SimCLR

BF16_PEAK_TFLOPS = {"NVIDIA H200": 989.4, "NVIDIA H100 80GB HBM3": 989.4}
"""Dense bf16 tensor-core peak per the vendor's data sheets (no sparsity)."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(step: Callable[[], None], images: int, steps: int, device: torch.device) -> float:
    """Images/s of ``step`` (two warm-up calls first)."""
    for _ in range(2):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return images * steps / (time.perf_counter() - start)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "32-true")


def simclr_rates(
    config: RunConfig, images: torch.Tensor, device: torch.device, steps: int
) -> dict[str, Any]:
    """Our SimCLR step (with and without making the views) and lightly's, images/s."""
    from lightly.loss import NTXentLoss as LightlyNTXent
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.utils.lars import LARS as LightlyLARS

    precision = config.trainer.precision
    ours = SimCLR(config, ["r", "g", "b"], [120.0] * 3, [60.0] * 3).to(device).train()
    optimizer = ours.configure_optimizers()
    batch = images.to(device)
    views = ours.on_after_batch_transfer({"image": batch}, 0)["views"]

    def our_step(make_views: bool) -> None:
        pair = ours.on_after_batch_transfer({"image": batch}, 0)["views"] if make_views else views
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, _ = ours.loss_and_embedding(*pair)
        loss.backward()
        optimizer.step()

    settings = config.method
    backbone = ours.backbone  # the same architecture and weights for both
    head = SimCLRProjectionHead(ours.feature_dim, settings.proj_hidden_dim, settings.proj_dim)  # type: ignore[attr-defined]
    lightly_model = nn.Sequential(backbone, head).to(device).train()
    criterion = LightlyNTXent(temperature=settings.temperature)  # type: ignore[attr-defined]
    lightly_opt = LightlyLARS(lightly_model.parameters(), lr=config.optimizer.lr, momentum=0.9)

    def lightly_step() -> None:
        lightly_opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = criterion(lightly_model(views[0]), lightly_model(views[1]))
        loss.backward()
        lightly_opt.step()

    full = timed_rate(lambda: our_step(True), len(batch), steps, device)
    premade = timed_rate(lambda: our_step(False), len(batch), steps, device)
    theirs = timed_rate(lightly_step, len(batch), steps, device)
    with FlopCounterMode(display=False) as counter:
        our_step(False)
    flops = counter.get_total_flops()
    achieved = flops * premade / len(batch) / 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = BF16_PEAK_TFLOPS.get(name)
    return {
        "ours_images_per_s": full,
        "ours_premade_views_images_per_s": premade,
        "lightly_images_per_s": theirs,
        "ratio_ours_to_lightly": full / theirs,
        "ratio_same_views": premade / theirs,
        "step_tflop": flops / 1e12,
        "achieved_tflops": achieved,
        "bf16_peak_tflops": peak,
        "share_of_peak": None if peak is None else achieved / peak,
        "device": name,
    }


def loader_rate(dataset: Dataset, batch_size: int, workers: int, batches: int) -> float:
    """Samples/s of a DataLoader alone (the first batch, worker start-up, not timed)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True)
    iterator = iter(loader)
    next(iterator)
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        try:
            count += len(next(iterator)["image"])
        except StopIteration:
            break
    return count / max(time.perf_counter() - start, 1e-9)


def loader_rates(
    datasets: dict[str, Dataset], batch_size: int, worker_counts: list[int], batches: int
) -> dict[str, dict[str, float]]:
    """Samples/s and samples/s per worker, per data set and worker count."""
    rates: dict[str, dict[str, float]] = {}
    for name, dataset in datasets.items():
        for workers in worker_counts:
            rate = loader_rate(dataset, batch_size, workers, batches)
            rates[f"{name}/{workers}"] = {
                "workers": workers,
                "samples_per_s": rate,
                "per_worker": rate / max(workers, 1),
            }
    return rates


def workers_needed(training_images_per_s: float, per_worker: float) -> int:
    """Loader processes that keep up with the training step."""
    return math.ceil(training_images_per_s / max(per_worker, 1e-9))


def tiles_per_second(model_dir: Path, tile: int, batch: int, device: torch.device) -> float:
    """Tiles/s of the bare inference network on preprocessed tiles held on the device."""
    from domainssl.infer.models import load_network, read_model_spec

    spec = read_model_spec(model_dir)
    network = load_network(model_dir, spec).to(device).eval()
    inputs = torch.randn(batch, spec.meta.in_chans, tile, tile, device=device)
    amp = device.type == "cuda"

    def forward() -> None:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            network(inputs)

    return timed_rate(forward, batch, 10, device)
