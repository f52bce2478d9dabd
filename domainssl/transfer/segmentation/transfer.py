"""`domainssl transfer --task segment`: train a decoder on the backbone, evaluate, report."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from domainssl.export import WEIGHTS, read_meta
from domainssl.io import atomic_write_text
from domainssl.reports import markdown_table, write_report
from domainssl.transfer.outputs import save_transfer_model
from domainssl.transfer.segmentation.data import SegmentationData, load_segmentation_data
from domainssl.transfer.segmentation.model import build_segmenter
from domainssl.transfer.segmentation.overlays import save_overlays
from domainssl.transfer.segmentation.training import (
    SegmentTrainConfig,
    config_for_init,
    encoder_schedule,
    evaluate_segmenter,
    fit_segmenter,
)


@dataclass
class SegmentSettings:
    """How to transfer to segmentation."""

    baseline: Literal["pretrained", "random"] = "pretrained"
    train: SegmentTrainConfig = field(default_factory=SegmentTrainConfig)
    device: str = "cpu"
    overlays: int = 4


def transfer_segment(
    run_dir: Path, data_path: Path, out_dir: Path, settings: SegmentSettings
) -> dict[str, Any]:
    """Fit a UNet-style decoder (and, unless frozen, the encoder) on the backbone of
    ``run_dir``; evaluate whole test images tile by tile; write model, metrics, report."""
    start = time.monotonic()
    settings = replace(settings, train=config_for_init(settings.train, settings.baseline))
    torch.manual_seed(settings.train.seed)
    meta = read_meta(run_dir)
    encoder_state = None if settings.baseline == "random" else load_file(str(run_dir / WEIGHTS))
    data = load_segmentation_data(data_path, meta.in_chans, seed=settings.train.seed)
    model = build_segmenter(meta, data.encoding.num_classes, encoder_state)
    summary = fit_segmenter(model, meta, data.train, settings.train, settings.device)
    scores = evaluate_segmenter(model, meta, data.test, settings.train.tile, settings.device)
    metrics: dict[str, Any] = {
        **asdict(scores),
        "mean_dice": _mean(scores.per_class_dice),
        "baseline": settings.baseline,
        "frozen_encoder": settings.train.freeze_encoder,
        "encoder": encoder_schedule(settings.train),
        "epochs_run": len(summary.epoch_losses),
        "stopped_by_time": summary.stopped_by_time,
        "test_images": len(data.test),
        "seconds": round(time.monotonic() - start, 1),
    }
    info = {
        "task": "segment",
        "num_classes": data.encoding.num_classes,
        "encoding": asdict(data.encoding),
        "tile": settings.train.tile,
        "settings": asdict(settings),
        "pretrain_run": str(run_dir),
        "backbone": asdict(meta),
    }
    save_transfer_model(model, info, out_dir)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write_text(out_dir / "split.json", json.dumps(_split_files(data), indent=2))
    overlays = save_overlays(
        model, meta, data.test, out_dir / "overlays", settings.train.tile, settings.overlays,
        settings.device,
    )  # fmt: skip
    _write_report(out_dir / "report.md", metrics, run_dir, data_path, overlays, out_dir)
    return metrics


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _split_files(data: SegmentationData) -> dict[str, list[str]]:
    parts = {"train": data.train, "val": data.val, "test": data.test}
    return {name: [str(p.image) for p in part.pairs] for name, part in parts.items()}


def _write_report(
    out: Path,
    metrics: dict[str, Any],
    run_dir: Path,
    data_path: Path,
    overlays: list[Path],
    out_dir: Path,
) -> None:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    facts = [
        f"Test: mIoU **{metrics['miou']:.4f}**, mean Dice {fmt(metrics['mean_dice'])}, pixel "
        f"accuracy {metrics['pixel_accuracy']:.4f} over {metrics['test_images']} whole images "
        "(tiled prediction; ignored pixels left out).",
        f"Backbone: `{run_dir}`; data: `{data_path}` (split in split.json).",
        f"{metrics['epochs_run']} epochs"
        + (" (stopped by the time budget)" if metrics["stopped_by_time"] else "")
        + f", {metrics['seconds']} s.",
    ]
    rows = [
        (k, fmt(iou), fmt(dice))
        for k, (iou, dice) in enumerate(
            zip(metrics["per_class_iou"], metrics["per_class_dice"], strict=True)
        )
    ]
    write_report(
        out,
        f"Segmentation transfer ({metrics['baseline']} backbone, {metrics['encoder']})",
        facts,
        markdown_table(["class", "IoU", "Dice"], rows),
        [(p.stem, str(p.relative_to(out_dir))) for p in overlays],
        [f"domainssl infer {out_dir} large_image.tif --out segmentation.tif"],
    )
