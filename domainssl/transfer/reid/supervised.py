"""`domainssl transfer RUN --task reid --protocol finetune`: fine-tune the pretrained backbone
on a data set's training identities with the AGW recipe (:mod:`.finetune`), evaluate it with
the data set's protocols, and write the model, metrics.json, report.md and cmc.png.

Training identities: SYSU-MM01 train + val ids (as AGW), RegDB the trial-1 training split
(evaluated on trial 1's test split only: other trials' test ids overlap it), a generic
layout its ``train/`` part (evaluated on ``test/``, each holding ``rgb/`` and ``ir/``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from domainssl.data.reid import IR, RGB, PersonImage, detect_layout, read_generic, training_images
from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, backbone_for, load_backbone
from domainssl.io import atomic_write_text
from domainssl.methods.mmgl import IR_WEIGHTS
from domainssl.reports import markdown_table, write_report
from domainssl.transfer.outputs import save_transfer_model
from domainssl.transfer.processes import train_on_devices
from domainssl.transfer.reid.finetune import ReidFinetuneConfig, train_reid
from domainssl.transfer.reid.network import ModalityEncoder, ReidNet
from domainssl.transfer.reid.transfer import (
    DATASET_NAMES,
    METRIC_KEYS,
    PROTOCOLS,
    Encoder,
    ReidSettings,
    evaluate_protocol,
    person_size,
    save_cmc_png,
)


def finetune_split(root: Path) -> tuple[str, list[PersonImage], Path]:
    """(layout, training images, folder evaluated) of ``root``."""
    if all((root / part / m).is_dir() for part in ("train", "test") for m in ("rgb", "ir")):
        return "generic", read_generic(root / "train"), root / "test"
    layout = detect_layout(root)
    if layout == "generic":
        raise DomainSSLError(
            f"{root} is one generic rgb/ + ir/ folder: fine-tuning needs identities it does "
            "not test on. Give a folder with train/ and test/, each holding rgb/<id>/ and "
            "ir/<id>/, with no identity in both."
        )
    return layout, training_images(root), root


def build_network(
    run_dir: Path, baseline: str, classes: int, non_local: bool
) -> tuple[ReidNet, BackboneMeta, bool]:
    """The AGW network on the run's backbone (or a random one of its architecture), with a
    separate infrared stem when the run was two-stream; and whether it is."""
    backbone, meta = load_backbone(run_dir)
    two_stream = (run_dir / IR_WEIGHTS).is_file()
    ir_backbone = backbone_for(meta) if two_stream else None
    if baseline == "random":
        backbone = backbone_for(meta)
    elif ir_backbone is not None:
        ir_backbone.load_state_dict(load_file(str(run_dir / IR_WEIGHTS)))
    if meta.in_chans != 3:
        raise DomainSSLError(
            f"{run_dir} was pretrained on {meta.in_chans} bands; re-ID needs a 3-channel "
            "(RGB / infrared repeated) backbone."
        )
    return ReidNet(backbone, classes, ir_backbone, non_local), meta, two_stream


def transfer_reid_finetune(
    run_dir: Path,
    data_path: Path,
    out_dir: Path | None,
    settings: ReidSettings,
    tuning: ReidFinetuneConfig,
) -> tuple[dict[str, Any], Path]:
    """Fine-tune, evaluate every protocol of the data set, write the outputs."""
    start = time.monotonic()
    layout, images, evaluated = finetune_split(data_path)
    if settings.trials < 1:
        raise DomainSSLError(f"--trials must be at least 1, got {settings.trials}.")
    classes = len({item.pid for item in images})
    torch.manual_seed(tuning.seed)  # the random init of the baseline and the new layers
    network, meta, two_stream = build_network(run_dir, settings.baseline, classes,
                                              tuning.non_local)  # fmt: skip
    size = person_size(meta)
    device = torch.device(settings.device)
    state, training = train_on_devices(
        train_reid, network, (images, meta, size, tuning), tuning.devices, device
    )
    network.load_state_dict(state)
    training["seconds"] = round(time.monotonic() - start, 1)
    network.eval()
    backbones = {m: ModalityEncoder(network, m) for m in (RGB, IR)}
    encoder = Encoder(backbones, meta, size, two_stream, settings)  # type: ignore[arg-type]
    trials = 1 if layout == "regdb" else settings.trials
    evaluations = {protocol: evaluate_protocol(evaluated, layout, protocol, trials, encoder)
                   for protocol in PROTOCOLS[layout]}  # fmt: skip
    first = evaluations[PROTOCOLS[layout][0]]
    metrics: dict[str, Any] = {key: first[key] for key in METRIC_KEYS}
    metrics.update(
        task="reid",
        protocol="finetune",
        dataset=DATASET_NAMES[layout],
        baseline=settings.baseline,
        two_stream=two_stream,
        evaluations=evaluations,
        training=training,
        settings={**asdict(settings), "finetune": asdict(tuning)},
        seconds=round(time.monotonic() - start, 1),
    )
    suffix = "-random" if settings.baseline == "random" else ""
    out_dir = out_dir or run_dir.parent / f"{run_dir.name}-reid-finetune{suffix}"
    info = {"task": "reid", "classes": classes, "two_stream": two_stream,
            "non_local": tuning.non_local, "pretrain_run": str(run_dir),
            "backbone": asdict(meta)}  # fmt: skip
    save_transfer_model(network, info, out_dir)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    save_cmc_png({p: e["cmc"] for p, e in evaluations.items()}, out_dir / "cmc.png")
    write_finetune_report(out_dir / "report.md", metrics, meta, run_dir, data_path)
    return metrics, out_dir


def write_finetune_report(
    out: Path, metrics: dict[str, Any], meta: BackboneMeta, run_dir: Path, data_path: Path
) -> None:
    """report.md: the training, then each protocol's mean metrics, and the CMC curves."""
    training, tuning = metrics["training"], metrics["settings"]["finetune"]
    budget = f"{training['epochs']} epochs, {training['steps']} steps" + (
        " (stopped by the time budget)" if training["stopped_by_time"] else ""
    )
    facts = [
        f"Backbone: `{run_dir}` ({meta.method}, {meta.timm_name}"
        + (", two-stream" if metrics["two_stream"] else "")
        + (", replaced by random init" if metrics["baseline"] == "random" else "")
        + "), fine-tuned with the AGW recipe: P x K batches "
        f"({tuning['identities']} identities x {tuning['images']} images per modality), "
        "BNNeck, identity cross-entropy (label smoothing "
        f"{tuning['label_smoothing']}) + weighted regularized triplet, GeM pooling"
        + (", non-local blocks" if tuning["non_local"] else "")
        + ".",
        f"Training: {training['identities']} identities, {training['images']} images of "
        f"`{data_path}`; {budget}; {training['seconds']} s.",
        "Evaluation: features after the BNNeck, L2-normalized, cosine distance.",
    ]
    rows = [
        (protocol, e["trials"], e["gallery_draw"],
         *(f"{100 * e[key]:.2f}" for key in METRIC_KEYS))
        for protocol, e in metrics["evaluations"].items()
    ]  # fmt: skip
    header = ["protocol", "trials", "gallery", "rank-1", "rank-10", "rank-20", "mAP", "mINP"]
    write_report(
        out,
        f"Re-ID fine-tune: {metrics['dataset']} ({metrics['baseline']} backbone)",
        facts,
        [*markdown_table(header, rows), "", "Percent, mean over trials."],
        [("CMC curves", "cmc.png")],
    )
