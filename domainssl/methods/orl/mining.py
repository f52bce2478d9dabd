"""ORL stage 2 (Xie et al. 2021): image kNN, RoI embeddings and cross-image object pairs.

Every sub-step is cached in the stage-2 folder and resumable: image embeddings
(``embeddings.npy``), neighbours (``knn.npy``), and pairs per chunk of query images
(``pairs/chunk_*.npz``). Retrieval is chunked matrix products with a running top-k, so
memory stays bounded (never an N x N matrix) at any N.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision.ops import roi_align

from domainssl.console import say
from domainssl.data.folder import Sample
from domainssl.data.proposal_cache import ProposalStore
from domainssl.io import atomic_write, atomic_write_text
from domainssl.methods.orl.pairs import PAIR_FIELDS, empty_pairs, save_chunk

QUERY_CHUNK = 256  # query images per pair-mining chunk file


@dataclass(frozen=True)
class MiningSettings:
    """Stage-2 knobs (from ``method.orl_*``)."""

    neighbors: int = 10
    top_fraction: float = 0.1
    mine_images: int | None = None
    roi_size: int = 32
    """Side (px) RoIs and whole images are resampled to (the views' crop size)."""
    batch_size: int = 256
    seed: int = 0


@torch.no_grad()
def knn_cosine(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    exclude_self: bool = False,
    block_bytes: int = 256 * 2**20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` keys by cosine similarity for each query, in bounded memory.

    Args:
        queries: (N, D); keys: (M, D).
        exclude_self: queries are the keys (same order); a query never retrieves itself.
        block_bytes: size of one similarity block (query chunk x key chunk) in float32.
    Returns:
        similarities (N, k) descending and key indices (N, k).
    """
    q, keys = F.normalize(queries.float(), dim=1), F.normalize(keys.float(), dim=1)
    key_chunk = min(len(keys), 65536)
    query_chunk = max(1, block_bytes // (4 * key_chunk))
    k = min(k, len(keys) - int(exclude_self))
    all_sims, all_idx = [], []
    for q0 in range(0, len(q), query_chunk):
        block = q[q0 : q0 + query_chunk]  # (Q, D)
        best_s = torch.full((len(block), 0), -math.inf)
        best_i = torch.zeros((len(block), 0), dtype=torch.long)
        for k0 in range(0, len(keys), key_chunk):
            sims = block @ keys[k0 : k0 + key_chunk].T  # (Q, Kc)
            if exclude_self:
                rows = torch.arange(len(block))
                cols = rows + q0 - k0
                inside = (cols >= 0) & (cols < sims.shape[1])
                sims[rows[inside], cols[inside]] = -math.inf
            block_s, block_i = sims.topk(min(k, sims.shape[1]), dim=1)  # (Q, k) of this block
            merged_s = torch.cat([best_s, block_s], 1)
            merged_i = torch.cat([best_i, block_i + k0], 1)
            best_s, top = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, top)
        all_sims.append(best_s)
        all_idx.append(best_i)
    return torch.cat(all_sims), torch.cat(all_idx)


def _standardize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return torch.nan_to_num((images.float() - m) / s, 0.0, 0.0, 0.0)


@torch.no_grad()
def embed_rois(
    backbone: nn.Module,
    images: torch.Tensor,
    boxes: list[torch.Tensor],
    mean: list[float],
    std: list[float],
    size: int,
) -> torch.Tensor:
    """Pooled features (R, D) of RoIs resampled to ``size`` px from raw (B, C, H, W) images.

    ``boxes[b]`` (K_b, 4) normalized boxes of image ``b``; R = sum of K_b.
    """
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    images = images.to(device)  # the accelerator when there is one
    height, width = images.shape[-2:]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    pixel_boxes = [(b.float() * scale).to(images.device) for b in boxes]
    crops = roi_align(_standardize(images, mean, std), pixel_boxes, size, aligned=True)
    return backbone(crops).float().cpu()  # (R, D)


def _read(dataset: Dataset[Sample], indices: list[int]) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in indices])  # (B, C, H, W)


def _cached(path: Path, compute: object) -> np.ndarray:
    """``np.load(path)``, or ``compute()`` saved there first."""
    if path.is_file():
        return np.load(path)
    array = compute()  # type: ignore[operator]

    def write(tmp: Path) -> None:
        with tmp.open("wb") as file:
            np.save(file, array)

    atomic_write(path, write)
    return array


def mine_pairs(
    backbone: nn.Module,
    dataset: Dataset[Sample],
    store: ProposalStore,
    mean: list[float],
    std: list[float],
    settings: MiningSettings,
    folder: Path,
    deadline: float | None = None,
) -> Path:
    """Run stage 2 into ``folder``; returns the folder of pair chunks.

    ``deadline`` (``time.monotonic()``) stops mining after the current chunk; the pairs
    mined so far are kept, and a rerun goes on where it stopped.
    """
    backbone.eval()
    rng = np.random.default_rng(settings.seed)
    total = len(store)
    count = min(settings.mine_images or total, total)
    subset = rng.permutation(total)[:count]  # dataset indices, random order: a stage cut
    # short by its time share has mined a random sample of the images, not the first class
    knobs = {key: value for key, value in asdict(settings).items() if key != "batch_size"}
    meta = json.dumps({**knobs, "images": total})
    if (folder / "meta.json").is_file() and (folder / "meta.json").read_text() != meta:
        shutil.rmtree(folder)  # other settings or data: the cached sub-steps do not apply
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "meta.json", meta)
    say(f"stage 2: embedding {count} images")
    size, batch = settings.roi_size, settings.batch_size
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])

    def embed_all() -> np.ndarray:
        parts = []
        for start in range(0, count, batch):
            picked = subset[start : start + batch].tolist()
            images = _read(dataset, picked)
            parts.append(embed_rois(backbone, images, [whole] * len(picked), mean, std, size))
        return torch.cat(parts).numpy()

    embeddings = torch.from_numpy(_cached(folder / "embeddings.npy", embed_all))  # (S, D)
    knn_file = folder / "knn.npy"
    k = settings.neighbors
    neighbors = torch.from_numpy(
        _cached(
            knn_file, lambda: knn_cosine(embeddings, embeddings, k, exclude_self=True)[1].numpy()
        )
    )  # (S, k) positions in the subset
    say(f"stage 2: retrieved {neighbors.shape[1]} neighbours per image")
    roi_cache: dict[int, torch.Tensor] = {}
    pair_dir = folder / "pairs"
    for q0 in range(0, count, QUERY_CHUNK):
        chunk_file = pair_dir / f"chunk_{q0:09d}.npz"
        if chunk_file.is_file():
            continue
        if deadline is not None and time.monotonic() > deadline:
            say(f"stage 2: time share spent; pairs for {q0}/{count} images")
            break
        queries = list(range(q0, min(q0 + QUERY_CHUNK, count)))
        needed = sorted(set(queries) | set(neighbors[queries].flatten().tolist()))
        missing = [p for p in needed if p not in roi_cache]
        for start in range(0, len(missing), batch):
            positions = missing[start : start + batch]
            indices = subset[positions].tolist()
            boxes = [store.of(i) for i in indices]
            features = embed_rois(backbone, _read(dataset, indices), boxes, mean, std, size)
            parts = features.split([len(b) for b in boxes])
            for position, part in zip(positions, parts, strict=True):
                roi_cache[position] = F.normalize(part, dim=1)
        save_chunk(chunk_file, _pairs_of(queries, neighbors, roi_cache, subset, store, settings))
        roi_cache = {p: roi_cache[p] for p in needed}  # keep the last chunk's RoIs only
    return pair_dir


def pairs_kept(top_fraction: float, query_rois: int, neighbor_rois: int) -> int:
    """RoI pairs kept per (image, neighbour): ``max(1, int(top_fraction * K_query))``, as
    Xie et al.'s released code does (not a share of all K_query x K_neighbour pairs)."""
    return min(max(1, int(top_fraction * query_rois)), query_rois * neighbor_rois)


def _pairs_of(
    queries: list[int],
    neighbors: torch.Tensor,
    rois: dict[int, torch.Tensor],
    subset: np.ndarray,
    store: ProposalStore,
    settings: MiningSettings,
) -> dict[str, np.ndarray]:
    """For each query and neighbour, the top ``top_fraction`` RoI-RoI cosine pairs."""
    rows: dict[str, list[np.ndarray]] = {name: [] for name in PAIR_FIELDS}
    for query in queries:
        mine = subset[query]
        for neighbor in neighbors[query].tolist():
            a, b = rois[query], rois[neighbor]  # (Ka, D), (Kb, D)
            if len(a) == 0 or len(b) == 0:
                continue
            sims = a @ b.T  # (Ka, Kb)
            keep = pairs_kept(settings.top_fraction, len(a), len(b))
            best, flat = sims.flatten().topk(keep)
            ia, ib = flat // sims.shape[1], flat % sims.shape[1]
            other = subset[neighbor]
            rows["image"].append(np.full(keep, mine, np.int64))
            rows["neighbor"].append(np.full(keep, other, np.int64))
            rows["box"].append(store.of(int(mine))[ia].numpy())
            rows["neighbor_box"].append(store.of(int(other))[ib].numpy())
            rows["similarity"].append(best.numpy())
    if not rows["image"]:
        return empty_pairs()
    return {name: np.concatenate(parts) for name, parts in rows.items()}
