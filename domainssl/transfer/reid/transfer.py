"""`domainssl transfer --task reid`: cross-modality retrieval with the standard protocols.

* SYSU-MM01 (Wu et al. 2017): infrared queries (cams 3, 6) of the ``exp/test_id.txt``
  identities against a single-shot RGB gallery (one random image per identity and camera:
  cams 1, 2, 4, 5 for ``all``-search, 1, 2 for ``indoor``), redrawn in each trial; cam3
  queries skip cam2 images (same place); CMC over distinct identities. The draws are the
  official ones when ``exp/rand_perm_cam.mat`` is there (row t of the data set's fixed
  permutations, as its MATLAB ``get_testing_set.m`` takes them), else seeded (seed = trial
  index, Python's ``random`` as AGW / DEEN draw them).
* RegDB (Nguyen et al. 2017): the test split of ``idx/`` trial t = 1..trials,
  visible-to-thermal (``v2t``) or thermal-to-visible (``t2v``).
* LLCM (Zhang & Wang 2023): all test images of one modality as queries against a
  single-shot gallery of the other, redrawn in each trial as the authors' DEEN code draws
  it (seed = trial index): ``v2i`` visible queries (cams 1-9) vs near-infrared gallery
  (cams 1, 2, 4-9), ``i2v`` the reverse (DEEN's default); gallery images of the query's
  identity in the query's camera are skipped; CMC over distinct identities (``eval_llcm``).
  Where DEEN's code disagrees with itself we follow the protocol's name: for "VIS to IR"
  (``test_mode = [2, 1]``) its ``train.py`` validation ranks the near-infrared gallery for
  every visible query, as ``v2i`` does, while its ``test.py`` transposes the distance matrix
  and ranks all visible images for each drawn near-infrared image (ZYK100/LLCM issue 35).
* Generic layout: every infrared image against every RGB image (``ir2rgb``) or the reverse.

Features: the frozen backbone's pooled features, L2-normalized; distance 1 - cosine.
Metrics are averaged over trials and written to metrics.json and report.md.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
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
    SYSU_DRAWS,
    PersonImage,
    PersonImages,
    by_identity_and_camera,
    detect_layout,
    llcm_test_ids,
    read_generic,
    read_llcm_test,
    read_regdb,
    read_sysu,
    read_sysu_draws,
    sysu_ids,
)
from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, backbone_for, load_backbone, preprocess
from domainssl.io import atomic_write_text
from domainssl.methods.mmgl import IR_WEIGHTS
from domainssl.reports import markdown_table, save_figure, write_report
from domainssl.transfer.reid.metrics import (
    SYSU_LOCATIONS,
    retrieval_metrics,
    same_identity_and_camera,
    same_location,
)

PROTOCOLS = {
    "sysu": ("all", "indoor"),
    "regdb": ("v2t", "t2v"),
    "llcm": ("i2v", "v2i"),
    "generic": ("ir2rgb", "rgb2ir"),
}
DATASET_NAMES = {
    "sysu": "SYSU-MM01",
    "regdb": "RegDB",
    "llcm": "LLCM",
    "generic": "generic RGB-IR folder",
}
SYSU_GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
METRIC_KEYS = ("rank1", "rank10", "rank20", "mAP", "mINP")
CMC_RANKS = tuple(range(1, 21))
"""Ranks of the CMC curve kept per trial (rank-1 .. rank-20)."""


@dataclass
class ReidSettings:
    """Which protocol, how many trials, and where to run."""

    protocol: str = "linear"
    """all / indoor (SYSU-MM01), v2t / t2v (RegDB), i2v / v2i (LLCM), ir2rgb / rgb2ir
    (generic); ``linear`` (frozen features, the CLI's default) = the data set's first."""
    trials: int = 10
    baseline: Literal["pretrained", "random"] = "pretrained"
    """``random``: the same evaluation with a randomly initialised backbone."""
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    """Seeds the random initialisation of ``random`` baselines and fine-tuned heads."""


class Encoder:
    """Pooled, L2-normalized features of person images, each modality through its own
    network (the same one for a one-stream model).

    Args:
        backbones: the feature network of each modality (RGB, IR), in eval mode.
        meta: the backbone metadata (normalization).
        size: (height, width) person images are resized to.
        two_stream: whether the modalities have their own stems.
    """

    def __init__(
        self,
        backbones: dict[int, nn.Module],
        meta: BackboneMeta,
        size: tuple[int, int],
        two_stream: bool,
        settings: ReidSettings,
    ) -> None:
        self.backbones = {m: net.eval().to(settings.device) for m, net in backbones.items()}
        self.meta, self.size, self.two_stream = meta, size, two_stream
        self.device, self.batch_size = settings.device, settings.batch_size
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


def pretrained_encoder(run_dir: Path, settings: ReidSettings) -> Encoder:
    """The frozen backbone of a pretraining run (two-stream runs: the infrared backbone,
    ``backbone_ir.safetensors``, for infrared images), or a random one of its architecture."""
    rgb, meta = load_backbone(run_dir)
    random = settings.baseline == "random"
    if random:
        torch.manual_seed(settings.seed)
        rgb = backbone_for(meta).eval()  # BatchNorm with running statistics
    if meta.in_chans != 3:
        raise DomainSSLError(
            f"{run_dir} was pretrained on {meta.in_chans} bands; re-ID needs a "
            "3-channel (RGB / infrared repeated) backbone."
        )
    backbones: dict[int, nn.Module] = {RGB: rgb, IR: rgb}
    two_stream = (run_dir / IR_WEIGHTS).is_file() and not random
    if two_stream:
        ir = backbone_for(meta)
        ir.load_state_dict(load_file(str(run_dir / IR_WEIGHTS)))
        backbones[IR] = ir
    return Encoder(backbones, meta, person_size(meta), two_stream, settings)


def person_size(meta: BackboneMeta) -> tuple[int, int]:
    """(height, width) of the person images the backbone was pretrained on."""
    person = meta.config.get("data", {}).get("person_size", (288, 144))
    return int(person[0]), int(person[1])


def single_shot(images: list[PersonImage], trial: int) -> list[PersonImage]:
    """One random image per (identity, camera), drawn with seed ``trial``: in (identity,
    camera) order, ``random.seed(trial)`` then ``random.choice`` of the file-name-sorted
    images, which is how AGW's and DEEN's ``process_gallery_sysu`` / ``process_gallery_llcm``
    draw, so the same files come out as in their code."""
    rng = random.Random(trial)
    return [rng.choice(group) for group in by_identity_and_camera(images).values()]


Draw = Callable[[list[PersonImage], int], list[PersonImage]]
"""A gallery draw: (pool of images, 0-based trial) -> the trial's gallery."""


def sysu_gallery(root: Path, trials: int) -> tuple[Draw, str]:
    """How SYSU-MM01's single-shot galleries are drawn, and the report's words for it: the
    official ``exp/rand_perm_cam.mat`` draws when the file is there, else seeded draws."""
    path = root / SYSU_DRAWS
    if not path.is_file():
        return single_shot, "seeded single-shot, seed = trial"
    draws = read_sysu_draws(path)
    if trials > draws.trials:
        raise DomainSSLError(
            f"{path} holds {draws.trials} trials, fewer than --trials {trials}: ask for "
            f"--trials {draws.trials} or fewer, or remove the file to draw seeded galleries."
        )
    return draws.gallery, "official rand_perm_cam.mat"


def evaluate(
    encoder: Encoder,
    query: list[PersonImage],
    gallery: list[PersonImage],
    sysu: bool,
    skip_same_camera: bool = False,
) -> dict[str, float]:
    """Metrics of one trial: SYSU-MM01 rules when ``sysu``; LLCM's when
    ``skip_same_camera`` (a query's identity in its own camera is removed, CMC over
    distinct identities)."""
    distance = (1 - encoder(query) @ encoder(gallery).T).numpy()  # (Q, G)
    query_pids = np.array([item.pid for item in query])
    gallery_pids = np.array([item.pid for item in gallery])
    if not (sysu or skip_same_camera):
        return retrieval_metrics(distance, query_pids, gallery_pids, ranks=CMC_RANKS)
    query_cams = np.array([item.cam for item in query])
    gallery_cams = np.array([item.cam for item in gallery])
    if sysu:
        ignore = same_location(query_cams, gallery_cams, SYSU_LOCATIONS)
    else:
        ignore = same_identity_and_camera(query_pids, query_cams, gallery_pids, gallery_cams)
    return retrieval_metrics(
        distance, query_pids, gallery_pids, ignore, "identities", ranks=CMC_RANKS
    )


def run_trials(
    root: Path, layout: str, protocol: str, trials: int, encoder: Encoder
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Per-trial metrics and a description of the query / gallery sets."""
    results = []
    if layout == "sysu":
        ids = sysu_ids(root, "test")
        query = read_sysu(root, ids, (3, 6))
        pool = read_sysu(root, ids, SYSU_GALLERY_CAMS[protocol])
        draw, drawn = sysu_gallery(root, trials)
        for trial in range(trials):
            gallery = draw(pool, trial)
            results.append(
                {**evaluate(encoder, query, gallery, sysu=True), "gallery": len(gallery)}
            )
        return results, {"identities": len(ids), "gallery_draw": drawn}
    if layout == "llcm":
        query_modality = RGB if protocol == "v2i" else IR
        query = read_llcm_test(root, query_modality)
        pool = read_llcm_test(root, IR if query_modality == RGB else RGB)
        for trial in range(trials):
            gallery = single_shot(pool, trial)
            results.append(
                {
                    **evaluate(encoder, query, gallery, sysu=False, skip_same_camera=True),
                    "gallery": len(gallery),
                }
            )
        drawn = "seeded single-shot, seed = trial (DEEN's draws)"
        return results, {"identities": len(llcm_test_ids(root)), "gallery_draw": drawn}
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


def evaluate_protocol(
    root: Path, layout: str, protocol: str, trials: int, encoder: Encoder
) -> dict[str, Any]:
    """Metrics of ``protocol`` averaged over its trials, with the per-trial values, the
    mean CMC curve (rank-1 .. rank-20) and what the query and gallery sets were."""
    per_trial, sets = run_trials(root, layout, protocol, trials, encoder)
    metrics: dict[str, Any] = {
        key: float(np.mean([trial[key] for trial in per_trial])) for key in METRIC_KEYS
    }
    metrics.update(
        cmc=[float(np.mean([trial[f"rank{k}"] for trial in per_trial])) for k in CMC_RANKS],
        trials=len(per_trial),
        queries=int(per_trial[0]["queries"]),
        gallery=int(per_trial[0]["gallery"]),
        per_trial=[
            {key: trial[key] for key in (*METRIC_KEYS, "queries", "gallery")} for trial in per_trial
        ],
        **sets,
    )
    return metrics


def save_cmc_png(curves: dict[str, list[float]], out: Path) -> None:
    """CMC curves (matching rate at rank 1 .. 20), one line per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4))
    for label, cmc in curves.items():
        axes.plot(CMC_RANKS, [100 * value for value in cmc], marker=".", label=label)
    axes.set_xlabel("rank")
    axes.set_ylabel("matching rate (%)")
    axes.set_xticks([1, 5, 10, 15, 20])
    axes.grid(alpha=0.3)
    axes.legend()
    save_figure(figure, out)


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
    encoder = pretrained_encoder(run_dir, settings)
    metrics = evaluate_protocol(data_path, layout, protocol, settings.trials, encoder)
    metrics.update(
        task="reid",
        dataset=DATASET_NAMES[layout],
        protocol=protocol,
        baseline=settings.baseline,
        two_stream=encoder.two_stream,
        settings=asdict(settings),
        seconds=round(time.monotonic() - start, 1),
    )
    suffix = "-random" if settings.baseline == "random" else ""
    out_dir = out_dir or run_dir.parent / f"{run_dir.name}-reid-{protocol}{suffix}"
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    save_cmc_png({protocol: metrics["cmc"]}, out_dir / "cmc.png")
    write_reid_report(out_dir / "report.md", metrics, encoder.meta, run_dir, data_path)
    return metrics, out_dir


def write_reid_report(
    out: Path, metrics: dict[str, Any], meta: BackboneMeta, run_dir: Path, data_path: Path
) -> None:
    """report.md: protocol, trials, mean metrics and the per-trial table."""
    protocol, trials = metrics["protocol"], metrics["trials"]
    described = {
        "all": "all-search: infrared queries (cams 3, 6) vs RGB gallery (cams 1, 2, 4, 5)",
        "indoor": "indoor-search: infrared queries (cams 3, 6) vs RGB gallery (cams 1, 2)",
        "v2t": "visible-to-thermal: visible queries vs thermal gallery",
        "t2v": "thermal-to-visible: thermal queries vs visible gallery",
        "ir2rgb": "infrared queries vs RGB gallery",
        "rgb2ir": "RGB queries vs infrared gallery",
        "v2i": "visible-to-infrared: visible queries (cams 1-9) vs near-infrared gallery "
        "(cams 1, 2, 4-9); gallery images of the query's identity in its own camera skipped; "
        "CMC over distinct identities (DEEN's eval_llcm)",
        "i2v": "infrared-to-visible: near-infrared queries (cams 1, 2, 4-9) vs visible "
        "gallery (cams 1-9); gallery images of the query's identity in its own camera "
        "skipped; CMC over distinct identities (DEEN's eval_llcm)",
    }[protocol]
    facts = [
        f"Protocol: {described}; gallery: {metrics['gallery_draw']}"
        + ("; cam3 queries skip cam2 (same place)" if metrics["dataset"] == "SYSU-MM01" else "")
        + ".",
        f"Trials: {trials}; {metrics['identities']} test identities, {metrics['queries']} "
        f"queries, {metrics['gallery']} gallery images (trial 1).",
        f"Backbone: `{run_dir}` ({meta.method}, {meta.timm_name}"
        + (", two-stream" if metrics["two_stream"] else "")
        + (", replaced by random init" if metrics["baseline"] == "random" else "")
        + "), frozen; cosine distance of L2-normalized pooled features.",
        f"Data: `{data_path}`. Took {metrics['seconds']} s.",
    ]
    rows = [
        (f"**mean of {trials}**", *(f"{100 * metrics[key]:.2f}" for key in METRIC_KEYS)),
        *(
            (f"trial {i + 1}", *(f"{100 * trial[key]:.2f}" for key in METRIC_KEYS))
            for i, trial in enumerate(metrics["per_trial"])
        ),
    ]
    body = [
        *markdown_table(["", "rank-1", "rank-10", "rank-20", "mAP", "mINP"], rows),
        "",
        "Percent. CMC over distinct gallery identities for SYSU-MM01 and LLCM (their authors' "
        "code), over images otherwise; mAP and mINP over images.",
    ]
    write_report(out, f"Re-ID transfer: {metrics['dataset']}, {protocol} ({trials} trials)",
                 facts, body)  # fmt: skip
