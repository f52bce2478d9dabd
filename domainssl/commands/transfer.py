"""`domainssl transfer`: classification, segmentation or re-ID retrieval on a backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from domainssl.commands.common import pick_device, user_errors
from domainssl.errors import DomainSSLError

Task = Literal["classify", "segment", "reid"]
Protocol = Literal[
    "linear", "knn", "finetune", "all", "indoor", "v2t", "t2v", "i2v", "v2i", "ir2rgb", "rgb2ir"
]


DEFAULT_EPOCHS = 10
"""Fine-tune / segmentation epochs when neither --epochs nor --max-time is given."""
DEFAULT_LR = 1e-3
"""Learning rate of a new classification head or segmentation decoder."""


@user_errors
def transfer(
    run_dir: Annotated[Path, typer.Argument(help="Folder of a finished `domainssl pretrain`.")],
    data: Annotated[Path, typer.Option(help="Labeled data (class folders, CSV, train/test).")],
    task: Annotated[Task, typer.Option(help="classify, segment or reid.")] = "classify",
    protocol: Annotated[
        Protocol,
        typer.Option(
            help="linear (frozen backbone), knn (classify only), or finetune. Re-ID: finetune "
            "(AGW, then every protocol of the data set) or frozen: all / indoor (SYSU-MM01), "
            "v2t / t2v (RegDB), i2v / v2i (LLCM), ir2rgb / rgb2ir; linear = the first."
        ),
    ] = "linear",
    baseline: Annotated[
        Literal["pretrained", "random"],
        typer.Option(help="random: same protocol on a randomly initialised backbone."),
    ] = "pretrained",
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Training epochs (fine-tune / segmentation); default 10, or until --max-time "
            "is spent when only that is given (both: whichever ends first)."
        ),
    ] = None,
    max_time: Annotated[
        str | None, typer.Option(help="Fine-tune budget HH:MM:SS; the best model so far is kept.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate of the new head / decoder (1e-3; re-ID fine-tune 0.1)."),
    ] = None,
    tile: Annotated[int, typer.Option(help="Segmentation: training / prediction tile (px).")] = 256,
    trials: Annotated[
        int, typer.Option(help="Re-ID: trials averaged (SYSU-MM01 gallery draws, RegDB splits).")
    ] = 10,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "auto",
    devices: Annotated[
        int,
        typer.Option(help="Fine-tuning processes: one per GPU (DDP), or CPU processes."),
    ] = 1,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and training.")] = 0,
    mpp: Annotated[
        float | None,
        typer.Option(help="Pathology: µm/px of the labeled images; warns on a mismatch."),
    ] = None,
    seeds: Annotated[
        int, typer.Option(help="Classify / segment: repeat with seeds 0..N-1 (95% intervals).")
    ] = 1,
    label_fractions: Annotated[
        str,
        typer.Option(help="Classify / segment: shares of the training labels, e.g. 0.01,0.1,1.0."),
    ] = "1.0",
    compare_random: Annotated[
        bool, typer.Option(help="Also run random init on the same subsets and seeds.")
    ] = False,
    random_from: Annotated[
        Path | None,
        typer.Option(
            help="A finished random-init sweep folder (--baseline random --seeds ...): its "
            "curve is drawn and tabled beside this one instead of training random init again."
        ),
    ] = None,
    frozen_warmup: Annotated[
        float,
        typer.Option(
            help="Finetune: share of the budget that trains the new head / decoder on the frozen "
            "pretrained backbone before everything is fine-tuned (e.g. 0.5; random init: none)."
        ),
    ] = 0.0,
) -> None:
    """Transfer a pretrained backbone to labeled data and write model, metrics and report."""
    from domainssl.config import parse_duration
    from domainssl.export import check_resolution, read_meta
    from domainssl.models.parallel import require_devices
    from domainssl.transfer.classification.finetune import FinetuneConfig
    from domainssl.transfer.classification.transfer import ClassifySettings, transfer_classify
    from domainssl.transfer.label_efficiency import SweepPlan, parse_fractions
    from domainssl.transfer.segmentation.training import SegmentTrainConfig
    from domainssl.transfer.segmentation.transfer import SegmentSettings, transfer_segment

    device = pick_device(accelerator)
    if device == "cuda" or devices < 1:
        require_devices(devices)
    check_resolution(read_meta(run_dir), mpp, str(data))
    seconds = parse_duration(max_time) if max_time is not None else None
    if epochs is None and seconds is None:
        epochs = DEFAULT_EPOCHS
    if frozen_warmup and (not 0 < frozen_warmup < 1 or protocol != "finetune" or task == "reid"):
        raise DomainSSLError(
            f"--frozen-warmup {frozen_warmup}: give a share in (0, 1) of a --protocol finetune "
            "budget, for --task classify or segment (linear keeps the backbone frozen throughout)."
        )
    if task == "reid":
        reid_transfer(run_dir, data, out, protocol, baseline, epochs, seconds, batch_size,
                      lr, trials, device, devices, seed)  # fmt: skip
        return
    lr = DEFAULT_LR if lr is None else lr
    if protocol not in ("linear", "knn", "finetune"):
        raise DomainSSLError(f"--protocol {protocol} is for --task reid (not {task}).")
    if seeds < 1:
        raise DomainSSLError(f"--seeds must be at least 1, got {seeds}.")
    if random_from is not None and (compare_random or baseline == "random"):
        raise DomainSSLError(
            "--random-from gives the random-init curve of an earlier sweep: leave out "
            "--compare-random and --baseline random."
        )
    plan = SweepPlan(parse_fractions(label_fractions), seeds, compare_random, random_from)
    suffix = "-random" if baseline == "random" else ""
    suffix += "" if plan.is_single_run else "-label-efficiency"
    out_dir = out or run_dir.parent / f"{run_dir.name}-{task}-{protocol}{suffix}"
    if task == "segment":
        if protocol == "knn":
            raise DomainSSLError("--protocol knn is for classification: use linear or finetune.")
        frozen = protocol == "linear"
        training = SegmentTrainConfig(
            tile, epochs, seconds, batch_size, lr, freeze_encoder=frozen,
            frozen_warmup=frozen_warmup, seed=seed, devices=devices,
        )  # fmt: skip
        segment = SegmentSettings(baseline, training, device)
        if not plan.is_single_run:
            from domainssl.transfer.segmentation.sweep import transfer_segment_sweep

            say_sweep(transfer_segment_sweep(run_dir, data, out_dir, segment, plan), out_dir)
            return
        metrics = transfer_segment(run_dir, data, out_dir, segment)
        typer.echo(f"Test mIoU {metrics['miou']:.4f}; wrote {out_dir} (read report.md first).")
        return
    tuning = FinetuneConfig(
        epochs, seconds, batch_size, lr, frozen_warmup=frozen_warmup, seed=seed, devices=devices
    )
    settings = ClassifySettings(protocol, baseline, finetune=tuning, device=device, seed=seed)
    if not plan.is_single_run:
        from domainssl.transfer.classification.sweep import transfer_classify_sweep

        say_sweep(transfer_classify_sweep(run_dir, data, out_dir, settings, plan), out_dir)
        return
    metrics = transfer_classify(run_dir, data, out_dir, settings)
    headline = "mAP" if "mAP" in metrics else "accuracy"
    typer.echo(f"Test {headline} {metrics[headline]:.4f}; wrote {out_dir} (read report.md first).")


def reid_transfer(
    run_dir: Path, data: Path, out: Path | None, protocol: str, baseline: str,
    epochs: int | None, seconds: float | None, batch_size: int, lr: float | None, trials: int,
    device: str, devices: int, seed: int,
) -> None:  # fmt: skip
    """Frozen-feature retrieval, or (``--protocol finetune``) AGW fine-tuning + retrieval."""
    from domainssl.transfer.reid.transfer import ReidSettings, transfer_reid

    reid = ReidSettings(protocol, trials, baseline, batch_size, device, seed)  # type: ignore[arg-type]
    if protocol != "finetune":
        metrics, out_dir = transfer_reid(run_dir, data, out, reid)
        typer.echo(
            f"{metrics['dataset']} {metrics['protocol']}, {metrics['trials']} trials: rank-1 "
            f"{metrics['rank1']:.4f}, mAP {metrics['mAP']:.4f}; wrote {out_dir} (read report.md)."
        )
        return
    from domainssl.transfer.reid.finetune import ReidFinetuneConfig
    from domainssl.transfer.reid.supervised import transfer_reid_finetune

    per_identity = ReidFinetuneConfig.images
    tuning = ReidFinetuneConfig(
        epochs, seconds, identities=max(batch_size // (2 * per_identity), 2),
        lr=0.1 if lr is None else lr, seed=seed, devices=devices,
    )  # fmt: skip
    metrics, out_dir = transfer_reid_finetune(run_dir, data, out, reid, tuning)
    scores = "; ".join(
        f"{name} rank-1 {e['rank1']:.4f}, mAP {e['mAP']:.4f}"
        for name, e in metrics["evaluations"].items()
    )
    typer.echo(f"{metrics['dataset']} fine-tuned: {scores}; wrote {out_dir} (read report.md).")


def say_sweep(metrics: dict[str, Any], out_dir: Path) -> None:
    """One line per init and fraction: the mean and its interval."""
    for init, points in metrics["curves"].items():
        for point in points:
            interval = "" if point["low"] is None else f" ± {point['high'] - point['mean']:.4f}"
            typer.echo(
                f"{init} init, {point['fraction']:g} of the labels ({point['labels']}): "
                f"{metrics['metric']} {point['mean']:.4f}{interval}"
            )
    typer.echo(f"Wrote {out_dir} (read report.md, label_efficiency.png).")
