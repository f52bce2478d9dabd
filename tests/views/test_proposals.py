"""Object proposals, their cache, object-aware crops and box jitter."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from domainssl.data.proposal_cache import ProposalBoxes, compute_proposals
from domainssl.methods.orl.pairs import FixedImages
from domainssl.views.crops import resample
from domainssl.views.object_crops import (
    box_affine,
    dilate_boxes,
    jitter_boxes,
    object_crop_pair,
    pad_boxes,
)
from domainssl.views.presets import EOViews, view_pair
from domainssl.views.proposals import ProposalSettings, filter_boxes, propose
from domainssl.views.settings import EOViewsConfig

RECTANGLES = [(4, 6, 24, 22), (36, 8, 58, 28), (14, 38, 46, 58)]  # x0, y0, x1, y1


def rectangles_image(bands: int, seed: int = 0) -> torch.Tensor:
    """(bands, 64, 64): three flat rectangles of distinct colours on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 2, (bands, 64, 64))
    for k, (x0, y0, x1, y1) in enumerate(RECTANGLES):
        image[:, y0:y1, x0:x1] = (
            100 + 60 * (k + 1) * (1 - 2 * (np.arange(bands) % 2))[:, None, None]
        )
    return torch.from_numpy(image.clip(0, 255)).float()


def brute_force_nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> list[int]:
    """Greedy NMS by the definition: take the best left, drop all overlapping it more."""
    left = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    kept: list[int] = []
    while left:
        best = left.pop(0)
        kept.append(best)
        left = [i for i in left if float(box_iou(boxes[best : best + 1], boxes[i : i + 1])) <= iou]
    return kept


def test_filter_matches_brute_force_nms() -> None:
    torch.manual_seed(0)
    corner = torch.rand(60, 2) * 40
    boxes = torch.cat([corner, corner + 8 + torch.rand(60, 2) * 16], 1)
    scores = torch.rand(60)
    settings = ProposalSettings(min_side=0, max_aspect=100.0, top_k=1000, max_area=1.0)
    kept = filter_boxes(boxes, scores, 64, 64, settings)
    expected = boxes[brute_force_nms(boxes, scores, 0.5)]
    assert torch.equal(kept, expected)


def test_filter_drops_small_elongated_and_scene_boxes() -> None:
    boxes = torch.tensor(
        [[0, 0, 4, 20], [0, 0, 40, 12], [0, 0, 64, 64], [10, 10, 30, 30], [0, 0, 30, 12.0]]
    )
    kept = filter_boxes(boxes, torch.arange(5.0), 64, 64, ProposalSettings(min_side=8))
    assert kept.tolist() == [[0, 0, 30, 12], [10, 10, 30, 30]]  # best score first


@pytest.mark.parametrize(("method", "bands"), [("grouping", 5), ("selective_search", 3)])
def test_proposals_recover_known_rectangles(method: str, bands: int) -> None:
    settings = ProposalSettings(method=method, scale=30, min_side=8, top_k=20)  # type: ignore[arg-type]
    boxes = propose(rectangles_image(bands), settings) * 64
    truth = torch.tensor(RECTANGLES, dtype=torch.float32)
    best = box_iou(truth, boxes).max(dim=1).values
    assert bool((best > 0.7).all()), best


def test_proposal_cache_is_computed_once(tmp_path: Path) -> None:
    images = torch.stack([rectangles_image(3, seed) for seed in range(5)])
    settings = ProposalSettings(method="grouping")
    store = compute_proposals(FixedImages(images), tmp_path, settings, "five", num_workers=0)
    assert len(store) == 5 and bool((store.counts() > 0).all())
    shard = next(tmp_path.glob("shard_*.npz"))
    stamp = shard.stat().st_mtime_ns
    again = compute_proposals(FixedImages(images), tmp_path, settings, "five")
    assert shard.stat().st_mtime_ns == stamp and torch.equal(again.boxes, store.boxes)
    sample = ProposalBoxes(FixedImages(images), store)[2]
    assert any(torch.equal(sample["box"], row) for row in store.of(2))


def test_box_affine_crops_exactly_the_box() -> None:
    image = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64)
    box = torch.tensor([[16 / 64, 8 / 64, 48 / 64, 40 / 64]])
    crop = resample(image, box_affine(box), 32)
    assert torch.allclose(crop[0, 0], image[0, 0, 8:40, 16:48], atol=1e-3)


def test_jitter_keeps_iou_above_threshold() -> None:
    torch.manual_seed(0)
    corner = torch.rand(500, 2) * 0.6
    boxes = torch.cat([corner, corner + 0.05 + torch.rand(500, 2) * 0.35], 1)
    for threshold in (0.3, 0.5, 0.7):
        jittered = jitter_boxes(boxes, threshold, strength=0.5)
        iou = box_iou(jittered, boxes).diagonal()
        assert bool((iou >= threshold - 1e-6).all())
        assert (jittered != boxes).any(1).float().mean() > 0.5  # most boxes did move


def test_pad_and_dilate_stay_inside_the_image() -> None:
    boxes = torch.tensor([[0.95, 0.0, 1.0, 0.02], [0.2, 0.2, 0.8, 0.8]])
    padded = pad_boxes(boxes, 0.3)
    sides = padded[:, 2:] - padded[:, :2]
    assert torch.allclose(sides[0], torch.tensor([0.3, 0.3]))
    assert torch.allclose(padded[1], boxes[1])
    dilated = dilate_boxes(padded, (1.1, 1.2))
    grown = (dilated[:, 2:] - dilated[:, :2]) / sides
    assert bool((grown >= 1.1 - 1e-5).all() and (grown <= 1.2 + 1e-5).all())
    assert bool((dilated >= 0).all() and (dilated <= 1).all())


def test_object_aware_views_look_inside_the_box() -> None:
    """Views of a box over a bright square only see the square (crop scale (1, 1) and no
    dilation), while scene views see the dark rest too."""
    images = torch.zeros(8, 2, 64, 64)
    images[:, :, 16:48, 16:48] = 1.0
    boxes = torch.tensor([[0.25, 0.25, 0.75, 0.75]]).expand(8, 4)
    off: dict[str, Any] = {"jitter_p": 0, "blur_p": 0, "noise_std": 0, "crop_ratio": (1, 1)}
    config = EOViewsConfig(crop_size=16, crops="object_aware", object_scale=(1.0, 1.0),
                         crop_scale=(1.0, 1.0), box_dilation=(1.0, 1.0), **off)  # fmt: skip
    views = EOViews(config, [0.0, 0.0], [1.0, 1.0])
    first, second = view_pair(views, images, boxes)
    assert torch.allclose(first, torch.ones_like(first), atol=1e-4)
    assert torch.allclose(second, torch.ones_like(second), atol=1e-4)
    scene = config.model_copy(update={"crops": "scene_object"})
    views_a, views_b = (
        resample(images, t, 16).mean(dim=(1, 2, 3)) for t in object_crop_pair(boxes, scene)
    )
    low, high = torch.minimum(views_a, views_b), torch.maximum(views_a, views_b)  # (8,) each
    assert torch.allclose(low, torch.full((8,), 0.25), atol=0.02)  # the scene: 1/4 bright
    assert torch.allclose(high, torch.ones(8), atol=1e-4)  # the object
    assert 0 < int((views_a > views_b).sum()) < 8  # order swapped at random


def test_random_crops_ignore_boxes() -> None:
    torch.manual_seed(0)
    views = EOViews(EOViewsConfig(crop_size=8), [0.0], [1.0])
    first, second = view_pair(views, torch.randn(3, 1, 16, 16), torch.rand(3, 4))
    assert first.shape == second.shape == (3, 1, 8, 8)
