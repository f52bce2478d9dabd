"""`domainssl transfer`: classification, segmentation or re-ID retrieval on a backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from domainssl.commands.common import pick_device, user_errors
from domainssl.errors import DomainSSLError

Task = Literal["classify", "segment", "reid"]
Protocol = Literal["linear", "knn", "finetune", "all", "indoor", "v2t", "t2v", "ir2rgb", "rgb2ir"]


@user_errors
def transfer(
    run_dir: Annotated[Path, typer.Argument(help="Folder of a finished `domainssl pretrain`.")],
    data: Annotated[Path, typer.Option(help="Labeled data (class folders, CSV, train/test).")],
    task: Annotated[Task, typer.Option(help="classify, segment or reid.")] = "classify",
    protocol: Annotated[
        Protocol,
        typer.Option(
            help="linear (frozen backbone), knn (classify only), or finetune. Re-ID (frozen): "
            "all / indoor (SYSU-MM01), v2t / t2v (RegDB), ir2rgb / rgb2ir; linear = the first."
        ),
    ] = "linear",
    baseline: Annotated[
        Literal["pretrained", "random"],
        typer.Option(help="random: same protocol on a randomly initialised backbone."),
    ] = "pretrained",
    epochs: Annotated[int, typer.Option(help="Training epochs (fine-tune / segmentation).")] = 10,
    max_time: Annotated[
        str | None, typer.Option(help="Fine-tune budget HH:MM:SS; the best model so far is kept.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate of the new head / decoder.")] = 1e-3,
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
) -> None:
    """Transfer a pretrained backbone to labeled data and write model, metrics and report."""
    from domainssl.config import parse_duration
    from domainssl.export import check_resolution, read_meta
    from domainssl.models.parallel import require_devices
    from domainssl.transfer.classification.finetune import FinetuneConfig
    from domainssl.transfer.classification.transfer import ClassifySettings, transfer_classify
    from domainssl.transfer.segmentation.training import SegmentTrainConfig
    from domainssl.transfer.segmentation.transfer import SegmentSettings, transfer_segment

    device = pick_device(accelerator)
    if device == "cuda" or devices < 1:
        require_devices(devices)
    check_resolution(read_meta(run_dir), mpp, str(data))
    seconds = parse_duration(max_time) if max_time is not None else None
    if task == "reid":
        from domainssl.transfer.reid.transfer import ReidSettings, transfer_reid

        reid = ReidSettings(protocol, trials, baseline, batch_size, device)
        metrics, out_dir = transfer_reid(run_dir, data, out, reid)
        typer.echo(
            f"{metrics['dataset']} {metrics['protocol']}, {metrics['trials']} trials: rank-1 "
            f"{metrics['rank1']:.4f}, mAP {metrics['mAP']:.4f}; wrote {out_dir} (read report.md)."
        )
        return
    if protocol not in ("linear", "knn", "finetune"):
        raise DomainSSLError(f"--protocol {protocol} is for --task reid (not {task}).")
    suffix = "-random" if baseline == "random" else ""
    out_dir = out or run_dir.parent / f"{run_dir.name}-{task}-{protocol}{suffix}"
    if task == "segment":
        if protocol == "knn":
            raise DomainSSLError("--protocol knn is for classification: use linear or finetune.")
        frozen = protocol == "linear"
        training = SegmentTrainConfig(
            tile, epochs, seconds, batch_size, lr, freeze_encoder=frozen, seed=seed,
            devices=devices,
        )  # fmt: skip
        metrics = transfer_segment(
            run_dir, data, out_dir, SegmentSettings(baseline, training, device)
        )
        typer.echo(f"Test mIoU {metrics['miou']:.4f}; wrote {out_dir} (read report.md first).")
        return
    tuning = FinetuneConfig(epochs, seconds, batch_size, lr, seed=seed, devices=devices)
    settings = ClassifySettings(protocol, baseline, finetune=tuning, device=device, seed=seed)
    metrics = transfer_classify(run_dir, data, out_dir, settings)
    headline = "mAP" if "mAP" in metrics else "accuracy"
    typer.echo(f"Test {headline} {metrics[headline]:.4f}; wrote {out_dir} (read report.md first).")
