"""Retrieval metrics of person re-identification: CMC (rank-k), mAP and mINP.

Per query, the gallery is ranked by distance; entries marked in ``ignore`` are removed
first. CMC rank-k is the share of queries with a true match in the first k; AP is the mean
precision at each true match; INP (Ye et al. 2021, "Deep Learning for Person
Re-identification: A Survey and Outlook") is (true matches) / (rank of the hardest one),
how far down the list the last match sits. Queries without a true match are left out.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from domainssl.errors import DomainSSLError

SYSU_LOCATIONS = {1: 1, 2: 2, 3: 2, 4: 4, 5: 5, 6: 6}
"""Camera -> place of SYSU-MM01: infrared cam3 shares the room of RGB cam2, so the standard
evaluation skips cam2 gallery images for cam3 queries (the data set authors' code)."""


def same_location(
    query_cams: np.ndarray, gallery_cams: np.ndarray, locations: dict[int, int]
) -> np.ndarray:
    """(Q, G) True where the gallery camera is at the query camera's place (to be ignored)."""
    place = np.vectorize(lambda cam: locations.get(int(cam), int(cam)), otypes=[int])
    return place(query_cams)[:, None] == place(gallery_cams)[None, :]


def same_identity_and_camera(
    query_pids: np.ndarray,
    query_cams: np.ndarray,
    gallery_pids: np.ndarray,
    gallery_cams: np.ndarray,
) -> np.ndarray:
    """(Q, G) True where the gallery image shows the query's identity in the query's camera:
    LLCM's rule (``eval_llcm`` of the authors' DEEN code removes these before ranking; each
    LLCM camera records both visible and near-infrared images under one number)."""
    same_pid = query_pids[:, None] == gallery_pids[None, :]
    return same_pid & (query_cams[:, None] == gallery_cams[None, :])


def retrieval_metrics(
    distance: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    ignore: np.ndarray | None = None,
    cmc_over: Literal["images", "identities"] = "images",
    ranks: tuple[int, ...] = (1, 10, 20),
) -> dict[str, float]:
    """Rank-k accuracies, mAP and mINP of a (Q, G) distance matrix.

    Args:
        distance: query-to-gallery distances (smaller is closer).
        query_pids: (Q,) identities of the queries.
        gallery_pids: (G,) identities of the gallery.
        ignore: (Q, G) True for gallery entries removed for that query.
        cmc_over: ``images`` (standard) or ``identities``: CMC over the distinct gallery
            identities in ranked order (SYSU-MM01 authors' code); mAP/mINP use images.
        ranks: the k of the reported rank-k.

    Returns:
        ``rank<k>`` for each k, ``mAP``, ``mINP`` (shares in [0, 1]) and ``queries`` (valid).
    """
    queries, gallery = distance.shape
    if query_pids.shape != (queries,) or gallery_pids.shape != (gallery,):
        raise ValueError(
            f"pids {query_pids.shape}, {gallery_pids.shape} do not fit {distance.shape}"
        )
    keep_all = np.ones_like(distance, dtype=bool) if ignore is None else ~ignore
    order = np.argsort(distance, axis=1, kind="stable")  # (Q, G)
    cmc = np.zeros(gallery)
    precisions, inverse_penalties = [], []
    for row in range(queries):
        ranked = order[row][keep_all[row, order[row]]]  # gallery indices, best first
        hits = gallery_pids[ranked] == query_pids[row]
        if not hits.any():
            continue
        positions = np.flatnonzero(hits)  # 0-based ranks of the true matches
        precisions.append(np.mean(np.arange(1, len(positions) + 1) / (positions + 1)))
        inverse_penalties.append(len(positions) / (positions[-1] + 1))
        if cmc_over == "identities":
            _, first = np.unique(gallery_pids[ranked], return_index=True)
            distinct = gallery_pids[ranked][np.sort(first)]
            cmc[int(np.flatnonzero(distinct == query_pids[row])[0]) :] += 1
        else:
            cmc[positions[0] :] += 1
    if not precisions:
        raise DomainSSLError(
            "No query has a true match in the gallery: query and gallery share no identity. "
            "Check the data set's split files."
        )
    cmc /= len(precisions)
    metrics = {f"rank{k}": float(cmc[min(k, gallery) - 1]) for k in ranks}
    metrics.update(
        mAP=float(np.mean(precisions)),
        mINP=float(np.mean(inverse_penalties)),
        queries=len(precisions),
    )
    return metrics
