"""Re-ID retrieval metrics: brute-force reference, a hand-worked example, exclusions."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from domainssl.errors import DomainSSLError
from domainssl.transfer.reid.metrics import (
    SYSU_LOCATIONS,
    retrieval_metrics,
    same_identity_and_camera,
    same_location,
)


def brute_force(
    distance: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    ignore: np.ndarray,
    ranks: tuple[int, ...],
    over_identities: bool,
) -> dict[str, float]:
    """Textbook definitions, one query and one rank at a time."""
    hits_at = {k: 0 for k in ranks}
    aps, inps = [], []
    for q in range(len(query_pids)):
        ranked = sorted((g for g in range(len(gallery_pids)) if not ignore[q, g]),
                        key=lambda g: distance[q, g])  # fmt: skip
        relevant = [gallery_pids[g] == query_pids[q] for g in ranked]
        if not any(relevant):
            continue
        precision_sum, found = 0.0, 0
        for position, is_match in enumerate(relevant, start=1):
            if is_match:
                found += 1
                precision_sum += found / position
                last = position
        aps.append(precision_sum / found)
        inps.append(found / last)
        listed = []
        for g in ranked:
            if not over_identities or gallery_pids[g] not in listed:
                listed.append(gallery_pids[g])
        for k in ranks:
            hits_at[k] += query_pids[q] in listed[:k]
    result = {f"rank{k}": hits_at[k] / len(aps) for k in ranks}
    return {**result, "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


@pytest.mark.parametrize("over_identities", [False, True])
def test_metrics_match_brute_force_on_random_distances(over_identities: bool) -> None:
    rng = np.random.default_rng(0)
    distance = rng.random((15, 40))
    query_pids, gallery_pids = rng.integers(0, 8, 15), rng.integers(0, 8, 40)
    ignore = rng.random((15, 40)) < 0.2
    ranks = (1, 3, 5, 10, 20)
    mode: Literal["images", "identities"] = "identities" if over_identities else "images"
    metrics = retrieval_metrics(distance, query_pids, gallery_pids, ignore, mode, ranks)
    reference = brute_force(distance, query_pids, gallery_pids, ignore, ranks, over_identities)
    for key, value in reference.items():
        assert metrics[key] == pytest.approx(value), key
    assert 0 < metrics["mINP"] <= metrics["mAP"] <= 1


def test_average_precision_agrees_with_sklearn() -> None:
    rng = np.random.default_rng(1)
    distance = rng.random((6, 25))
    query_pids, gallery_pids = rng.integers(0, 4, 6), rng.integers(0, 4, 25)
    expected = [
        average_precision_score(gallery_pids == pid, -row)
        for row, pid in zip(distance, query_pids, strict=True)
        if (gallery_pids == pid).any()
    ]
    metrics = retrieval_metrics(distance, query_pids, gallery_pids)
    assert metrics["mAP"] == pytest.approx(np.mean(expected))


def test_hand_worked_example() -> None:
    gallery_pids = np.array([1, 2, 1, 3, 1])
    distance = np.array([[0.5, 0.1, 0.7, 0.2, 0.9], [0.3, 0.4, 0.1, 0.2, 0.6]])
    # query pid 1 ranks pids 2, 3, 1, 1, 1: matches at 3, 4, 5
    #   AP = (1/3 + 2/4 + 3/5) / 3 = 0.47778, INP = 3/5
    # query pid 2 ranks pids 1, 3, 1, 2, 1: match at 4 -> AP = INP = 1/4
    metrics = retrieval_metrics(distance, np.array([1, 2]), gallery_pids, ranks=(1, 3, 4))
    assert metrics["mAP"] == pytest.approx(((1 / 3 + 2 / 4 + 3 / 5) / 3 + 0.25) / 2)
    assert metrics["mINP"] == pytest.approx((0.6 + 0.25) / 2)
    assert (metrics["rank1"], metrics["rank3"], metrics["rank4"]) == (0.0, 0.5, 1.0)
    # over distinct identities query 2 sees 1, 3, 2: its match moves up to rank 3
    by_id = retrieval_metrics(distance, np.array([1, 2]), gallery_pids, None, "identities", (3,))
    assert by_id["rank3"] == 1.0 and by_id["mAP"] == pytest.approx(metrics["mAP"])


def test_sysu_cam3_queries_skip_cam2_gallery() -> None:
    gallery_pids, gallery_cams = np.array([1, 1, 2]), np.array([2, 1, 1])
    distance = np.array([[0.1, 0.5, 0.3], [0.1, 0.5, 0.3]])  # cam2 image of pid 1 is nearest
    query_pids, query_cams = np.array([1, 1]), np.array([3, 6])
    ignore = same_location(query_cams, gallery_cams, SYSU_LOCATIONS)
    assert ignore.tolist() == [[True, False, False], [False, False, False]]
    cam3 = retrieval_metrics(distance[:1], query_pids[:1], gallery_pids, ignore[:1])
    cam6 = retrieval_metrics(distance[1:], query_pids[1:], gallery_pids, ignore[1:])
    assert cam3["rank1"] == 0.0 and cam3["mAP"] == pytest.approx(0.5)  # pid 2 first, then 1
    assert cam6["rank1"] == 1.0 and cam6["mAP"] == pytest.approx((1 + 2 / 3) / 2)  # 1st, 3rd


def test_llcm_skips_only_the_query_identity_in_the_query_camera() -> None:
    # query: pid 1 seen by cam 1; gallery: pid 1 in cam 1 (nearest), pid 2 in cam 1,
    # pid 1 in cam 2, pid 3 in cam 3
    gallery_pids, gallery_cams = np.array([1, 2, 1, 3]), np.array([1, 1, 2, 3])
    distance = np.array([[0.1, 0.2, 0.3, 0.4]])
    ignore = same_identity_and_camera(np.array([1]), np.array([1]), gallery_pids, gallery_cams)
    assert ignore.tolist() == [[True, False, False, False]]  # pid 2 in cam 1 stays
    kept = retrieval_metrics(distance, np.array([1]), gallery_pids, ignore, "identities")
    assert kept["rank1"] == 0.0 and kept["rank10"] == 1.0  # ranked ids: 2, 1, 3
    assert kept["mAP"] == pytest.approx(0.5) and kept["mINP"] == pytest.approx(0.5)
    assert retrieval_metrics(distance, np.array([1]), gallery_pids)["rank1"] == 1.0


def test_same_camera_is_excluded_for_unlisted_cameras() -> None:
    ignore = same_location(np.array([7, 8]), np.array([7, 8, 9]), {})
    assert ignore.tolist() == [[True, False, False], [False, True, False]]


def test_queries_without_true_match_are_skipped_and_none_is_an_error() -> None:
    distance = np.array([[0.2, 0.1], [0.1, 0.2]])
    metrics = retrieval_metrics(distance, np.array([5, 1]), np.array([1, 2]))
    assert metrics["queries"] == 1 and metrics["rank1"] == 1.0
    with pytest.raises(DomainSSLError, match="No query has a true match"):
        retrieval_metrics(distance, np.array([5, 6]), np.array([1, 2]))
