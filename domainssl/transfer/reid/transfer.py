"""`domainssl transfer --task reid`: cross-modality retrieval with the standard protocols.

* SYSU-MM01 (Wu et al. 2017): infrared queries (cams 3, 6) of the ``exp/test_id.txt``
  identities against a single-shot RGB gallery (one random image per identity and camera:
  cams 1, 2, 4, 5 for ``all``-search, 1, 2 for ``indoor``), redrawn in each trial (seed =
  trial index); cam3 queries skip cam2 images (same place); CMC over distinct identities.
* RegDB (Nguyen et al. 2017): the test split of ``idx/`` trial t = 1..trials,
  visible-to-thermal (``v2t``) or thermal-to-visible (``t2v``).
* Generic layout: every infrared image against every RGB image (``ir2rgb``) or the reverse.

Features: the frozen backbone's pooled features, L2-normalized; distance 1 - cosine.
Metrics are averaged over trials and written to metrics.json and report.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from domainssl.data.reid import (
    IR,
    RGB,
    PersonImage,
    PersonImages,
    detect_layout,
    read_generic,
    read_regdb,
    read_sysu,
    sysu_ids,
)
from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, backbone_for, load_backbone, preprocess
from domainssl.io import atomic_write_text
from domainssl.methods.mmgl import IR_WEIGHTS
from domainssl.transfer.reid.metrics import SYSU_LOCATIONS, retrieval_metrics, same_location

PROTOCOLS = {"sysu": ("all", "indoor"), "regdb": ("v2t", "t2v"), "generic": ("ir2rgb", "rgb2ir")}
DATASET_NAMES = {"sysu": "SYSU-MM01", "regdb": "RegDB", "generic": "generic RGB-IR folder"}
SYSU_GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
METRIC_KEYS = ("rank1", "rank10", "rank20", "mAP", "mINP")


@dataclass
class ReidSettings:
    """Which protocol, how many trials, and where to run."""

    protocol: str = "linear"
    """all / indoor (SYSU-MM01), v2t / t2v (RegDB), ir2rgb / rgb2ir (generic); ``linear``
    (frozen features, the CLI's default) = the data set's first."""
    trials: int = 10
    baseline: Literal["pretrained", "random"] = "pretrained"
    """``random``: the same evaluation with a randomly initialised backbone."""
    batch_size: int = 64
    device: str = "cpu"


class Encoder:
    """Pooled, L2-normalized features of person images; two-stream runs use the infrared
    backbone (``backbone_ir.safetensors``) for infrared images."""

    def __init__(self, run_dir: Path, settings: ReidSettings) -> None:
        rgb, self.meta = load_backbone(run_dir)
        random = settings.baseline == "random"
        if random:
            rgb = backbone_for(self.meta).eval()  # BatchNorm with running statistics
        device = settings.device
        if self.meta.in_chans != 3:
            raise DomainSSLError(
                f"{run_dir} was pretrained on {self.meta.in_chans} bands; re-ID needs a "
                "3-channel (RGB / infrared repeated) backbone."
            )
        self.backbones: dict[int, nn.Module] = {RGB: rgb.to(device), IR: rgb.to(device)}
        self.two_stream = (run_dir / IR_WEIGHTS).is_file() and not random
        if self.two_stream:
            ir = backbone_for(self.meta)
            ir.load_state_dict(load_file(str(run_dir / IR_WEIGHTS)))
            self.backbones[IR] = ir.eval().to(device)
        person = self.meta.config.get("data", {}).get("person_size", (288, 144))
        self.size = (int(person[0]), int(person[1]))
        self.device, self.batch_size = device, settings.batch_size
        self.cache: dict[Path, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, images: list[PersonImage]) -> torch.Tensor:
        """Features (N, D) of ``images``, computed once per file."""
        todo = [item for item in images if item.path not in self.cache]
        for modality in (RGB, IR):
            part = [item for item in todo if item.modality == modality]
            if not part:
                continue
            loader = DataLoader(PersonImages(part, self.size), batch_size=self.batch_size)
            features = [
                self.backbones[modality](preprocess(self.meta, batch["image"]).to(self.device))
                for batch in loader
            ]
            normalized = F.normalize(torch.cat(features).float().cpu(), dim=1)  # (n, D)
            self.cache.update(zip((item.path for item in part), normalized, strict=True))
        return torch.stack([self.cache[item.path] for item in images])


def single_shot(images: list[PersonImage], trial: int) -> list[PersonImage]:
    """One random image per (identity, camera), drawn with seed ``trial``."""
    groups: dict[tuple[int, int], list[PersonImage]] = {}
    for item in images:
        groups.setdefault((item.pid, item.cam), []).append(item)
    rng = np.random.default_rng(trial)
    return [group[rng.integers(len(group))] for _, group in sorted(groups.items())]


def evaluate(
    encoder: Encoder, query: list[PersonImage], gallery: list[PersonImage], sysu: bool
) -> dict[str, float]:
    """Metrics of one trial (SYSU-MM01 rules when ``sysu``)."""
    distance = (1 - encoder(query) @ encoder(gallery).T).numpy()  # (Q, G)
    query_pids = np.array([item.pid for item in query])
    gallery_pids = np.array([item.pid for item in gallery])
    if not sysu:
        return retrieval_metrics(distance, query_pids, gallery_pids)
    query_cams = np.array([item.cam for item in query])
    gallery_cams = np.array([item.cam for item in gallery])
    ignore = same_location(query_cams, gallery_cams, SYSU_LOCATIONS)
    return retrieval_metrics(distance, query_pids, gallery_pids, ignore, "identities")


def run_trials(
    root: Path, layout: str, protocol: str, trials: int, encoder: Encoder
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Per-trial metrics and a description of the query / gallery sets."""
    results = []
    if layout == "sysu":
        ids = sysu_ids(root, "test")
        query = read_sysu(root, ids, (3, 6))
        pool = read_sysu(root, ids, SYSU_GALLERY_CAMS[protocol])
        for trial in range(trials):
            gallery = single_shot(pool, trial)
            results.append(
                {**evaluate(encoder, query, gallery, sysu=True), "gallery": len(gallery)}
            )
        return results, {"identities": len(ids), "gallery_draw": "single-shot, seed = trial"}
    if layout == "regdb":
        missing = [
            t
            for t in range(1, trials + 1)
            if not (root / "idx" / f"test_visible_{t}.txt").is_file()
        ]
        if missing:
            raise DomainSSLError(
                f"{root}/idx has no test split for trials {missing}: ask for --trials "
                f"{missing[0] - 1} or fewer (RegDB ships 10)."
            )
    trials = trials if layout == "regdb" else 1
    for trial in range(1, trials + 1):
        images = read_regdb(root, "test", trial) if layout == "regdb" else read_generic(root)
        query_modality = RGB if protocol in ("v2t", "rgb2ir") else IR
        query = [item for item in images if item.modality == query_modality]
        gallery = [item for item in images if item.modality != query_modality]
        results.append({**evaluate(encoder, query, gallery, sysu=False), "gallery": len(gallery)})
    identities = len({item.pid for item in query + gallery})
    return results, {"identities": identities, "gallery_draw": "all test images"}


def transfer_reid(
    run_dir: Path, data_path: Path, out_dir: Path | None, settings: ReidSettings
) -> tuple[dict[str, Any], Path]:
    """Evaluate the backbone of ``run_dir`` on ``data_path``; write metrics.json and
    report.md into ``out_dir`` (default ``<run>-reid-<protocol>[-random]`` beside the run)."""
    start = time.monotonic()
    layout = detect_layout(data_path)
    protocol = PROTOCOLS[layout][0] if settings.protocol == "linear" else settings.protocol
    if protocol not in PROTOCOLS[layout]:
        raise DomainSSLError(
            f"--protocol {protocol} does not apply to {DATASET_NAMES[layout]}: use "
            f"{' or '.join(PROTOCOLS[layout])}."
        )
    if settings.trials < 1:
        raise DomainSSLError(f"--trials must be at least 1, got {settings.trials}.")
    encoder = Encoder(run_dir, settings)
    per_trial, sets = run_trials(data_path, layout, protocol, settings.trials, encoder)
    metrics: dict[str, Any] = {
        key: float(np.mean([trial[key] for trial in per_trial])) for key in METRIC_KEYS
    }
    metrics.update(
        task="reid",
        dataset=DATASET_NAMES[layout],
        protocol=protocol,
        baseline=settings.baseline,
        trials=len(per_trial),
        queries=int(per_trial[0]["queries"]),
        gallery=int(per_trial[0]["gallery"]),
        two_stream=encoder.two_stream,
        per_trial=per_trial,
        settings=asdict(settings),
        seconds=round(time.monotonic() - start, 1),
        **sets,
    )
    suffix = "-random" if settings.baseline == "random" else ""
    out_dir = out_dir or run_dir.parent / f"{run_dir.name}-reid-{protocol}{suffix}"
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write_text(out_dir / "report.md", report(metrics, encoder.meta, run_dir, data_path))
    return metrics, out_dir


def report(metrics: dict[str, Any], meta: BackboneMeta, run_dir: Path, data_path: Path) -> str:
    """A short markdown summary: protocol, trials, mean metrics and the per-trial table."""
    protocol, trials = metrics["protocol"], metrics["trials"]
    described = {
        "all": "all-search: infrared queries (cams 3, 6) vs RGB gallery (cams 1, 2, 4, 5)",
        "indoor": "indoor-search: infrared queries (cams 3, 6) vs RGB gallery (cams 1, 2)",
        "v2t": "visible-to-thermal: visible queries vs thermal gallery",
        "t2v": "thermal-to-visible: thermal queries vs visible gallery",
        "ir2rgb": "infrared queries vs RGB gallery",
        "rgb2ir": "RGB queries vs infrared gallery",
    }[protocol]
    row = " | ".join(f"{100 * metrics[key]:.2f}" for key in METRIC_KEYS)
    lines = [
        f"# Re-ID transfer: {metrics['dataset']}, {protocol} ({trials} trials)",
        "",
        f"- Protocol: {described}; gallery: {metrics['gallery_draw']}"
        + ("; cam3 queries skip cam2 (same place)" if metrics["dataset"] == "SYSU-MM01" else "")
        + ".",
        f"- Trials: {trials}; {metrics['identities']} test identities, {metrics['queries']} "
        f"queries, {metrics['gallery']} gallery images (trial 1).",
        f"- Backbone: `{run_dir}` ({meta.method}, {meta.timm_name}"
        + (", two-stream" if metrics["two_stream"] else "")
        + (", replaced by random init" if metrics["baseline"] == "random" else "")
        + "), frozen; cosine distance of L2-normalized pooled features.",
        f"- Data: `{data_path}`. Took {metrics['seconds']} s.",
        "",
        "| | rank-1 | rank-10 | rank-20 | mAP | mINP |",
        "|---|---|---|---|---|---|",
        f"| **mean of {trials}** | {row} |",
        *(
            f"| trial {i + 1} | "
            + " | ".join(f"{100 * trial[key]:.2f}" for key in METRIC_KEYS)
            + " |"
            for i, trial in enumerate(metrics["per_trial"])
        ),
        "",
        "Percent. CMC over distinct gallery identities for SYSU-MM01 (its authors' code), "
        "over images otherwise; mAP and mINP over images.",
        "",
    ]
    return "\n".join(lines)
