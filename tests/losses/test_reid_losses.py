"""MMGL losses: permutation set and stripe shuffles, cycle-consistent pairs, part InfoNCE
(with a 2-process gloo check), and the method's one- and two-stream backbones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from domainssl.config import RunConfig
from domainssl.errors import DomainSSLError
from domainssl.losses.part_cycle import PartCycleContrastiveLoss, cycle_consistent_pairs
from domainssl.losses.permutation import (
    PermutationRecoveryLoss,
    permutation_set,
    shuffle_stripes,
)
from domainssl.methods.mmgl import MMGL, STEM


def test_permutation_set_sizes() -> None:
    full = permutation_set(4, 24)
    assert full.shape == (24, 4) and len({tuple(p) for p in full.tolist()}) == 24
    chosen = permutation_set(5, 10, seed=3)
    assert chosen.shape == (10, 5) and len({tuple(p) for p in chosen.tolist()}) == 10
    assert all(sorted(p) == list(range(5)) for p in chosen.tolist())
    assert torch.equal(chosen, permutation_set(5, 10, seed=3))
    latin = permutation_set(5, 5)  # greedy max-min Hamming finds a Latin square
    distance = (latin[:, None] != latin[None]).sum(-1) + 5 * torch.eye(5, dtype=torch.long)
    assert int(distance.min()) == 5
    for stripes, size in ((4, 25), (4, 1), (1, 1), (9, 10)):
        with pytest.raises(DomainSSLError):
            permutation_set(stripes, size)


def test_shuffle_labels_match_the_stripe_order() -> None:
    stripes, rows = 4, 3
    images = torch.arange(stripes).repeat_interleave(rows).float()  # stripe s holds value s
    images = images.view(1, 1, stripes * rows, 1).expand(24, 2, stripes * rows, 5)
    extra_row = torch.full((24, 2, 1, 5), 9.0)  # not a multiple of the stripe count: cut
    permutations = permutation_set(stripes, 24)
    labels = torch.arange(24)
    shuffled = shuffle_stripes(torch.cat([images, extra_row], dim=2), permutations, labels)
    assert shuffled.shape == (24, 2, stripes * rows, 5)
    seen = shuffled[:, 0, ::rows, 0].long()  # (24, S) value of each output stripe
    assert torch.equal(seen, permutations[labels])
    recovery = PermutationRecoveryLoss(stripes, 24)
    drawn = recovery.draw(64)
    assert drawn.min() >= 0 and drawn.max() < 24
    assert torch.equal(
        recovery.shuffle(images, labels), shuffle_stripes(images, permutations, labels)
    )
    logits = torch.zeros(24, 24)
    assert float(recovery(logits, labels)) == pytest.approx(math.log(24))
    with pytest.raises(ValueError, match="expected logits"):
        recovery(torch.zeros(24, 10), labels)


def test_cycle_selection_on_constructed_features() -> None:
    e = torch.eye(4)
    rgb = torch.stack([e[0], e[1], 0.9 * e[0] + 0.1 * e[2]])
    ir = torch.stack([e[1], e[0], e[3]])
    # rgb0 <-> ir1 and rgb1 <-> ir0 are mutual; rgb2 -> ir1 -> rgb0 breaks the cycle;
    # ir2 is orthogonal to all: its nearest (rgb0) points elsewhere.
    rgb_index, ir_index = cycle_consistent_pairs(rgb, ir)
    assert sorted(zip(rgb_index.tolist(), ir_index.tolist(), strict=True)) == [(0, 1), (1, 0)]
    rgb_index, ir_index = cycle_consistent_pairs(ir, rgb)  # symmetric
    assert sorted(zip(rgb_index.tolist(), ir_index.tolist(), strict=True)) == [(0, 1), (1, 0)]


def reference_cycle_loss(rgb: torch.Tensor, ir: torch.Tensor, temperature: float) -> torch.Tensor:
    a, b = F.normalize(rgb, dim=1), F.normalize(ir, dim=1)
    terms = []
    for i in range(len(a)):
        j = int((a[i] @ b.T).argmax())
        if int((b[j] @ a.T).argmax()) == i:
            terms.append(-F.log_softmax(a[i] @ b.T / temperature, dim=0)[j])
            terms.append(-F.log_softmax(b[j] @ a.T / temperature, dim=0)[i])
    return torch.stack(terms).mean()


def test_part_cycle_loss_matches_reference() -> None:
    torch.manual_seed(0)
    rgb, ir = torch.randn(12, 6), torch.randn(10, 6)
    loss = PartCycleContrastiveLoss(0.2)
    value = loss(rgb, ir)
    assert loss.pairs > 0
    assert float(value) == pytest.approx(float(reference_cycle_loss(rgb, ir, 0.2)), rel=1e-5)
    similarity = F.normalize(rgb, dim=1) @ F.normalize(ir, dim=1).T
    best = divmod(int(similarity.argmax()), similarity.shape[1])  # always a cycle pair
    pairs = set(zip(*(index.tolist() for index in cycle_consistent_pairs(rgb, ir)), strict=True))
    assert best in pairs and len(pairs) == loss.pairs


BATCH, DIM, FEATURES = 8, 6, 5


def make_parts() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    torch.manual_seed(0)
    return (
        torch.randn(BATCH, FEATURES),
        torch.randn(BATCH, FEATURES),
        torch.nn.Linear(FEATURES, DIM),
    )


def cycle_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x_rgb, x_ir, layer = make_parts()
    rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    loss = PartCycleContrastiveLoss(0.3)(layer(x_rgb[rows]), layer(x_ir[rows]))
    loss.backward()
    grad = layer.weight.grad
    assert grad is not None
    dist.all_reduce(grad)
    grad /= 2  # what DDP does
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total / 2, "grad": grad}, Path(out_dir) / "ddp.pt")
    dist.destroy_process_group()


def test_part_cycle_loss_two_processes_match_one(tmp_path: Path) -> None:
    mp.spawn(cycle_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "ddp.pt", weights_only=True)
    x_rgb, x_ir, layer = make_parts()
    loss = PartCycleContrastiveLoss(0.3)(layer(x_rgb), layer(x_ir))
    loss.backward()
    assert distributed["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert torch.allclose(distributed["grad"], layer.weight.grad, atol=1e-6)


def first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def mmgl(**method: object) -> MMGL:
    config = RunConfig.model_validate(
        {
            "domain": "reid",
            "model": {"backbone": "resnet10t", "small_input": False},
            "views": {"preset": "reid"},
            "method": {"name": "mmgl", "proj_hidden_dim": 16, "proj_dim": 8, **method},
        }
    )
    return MMGL(config, ["red", "green", "blue"], [0.0] * 3, [1.0] * 3)


def test_mmgl_one_stream_losses() -> None:
    torch.manual_seed(0)
    method = mmgl(stripes=3, permutations=6)
    rgb, ir = torch.randn(4, 3, 48, 24), torch.randn(4, 3, 48, 24)
    loss, embedding = method.loss_and_embedding(rgb, ir)
    assert torch.isfinite(loss) and embedding.shape == (4 * 3, 8)
    assert method.stats["train/perm_loss"] == pytest.approx(math.log(6), abs=1.0)
    assert 0 <= method.stats["train/perm_acc"] <= 1 and 0 < method.stats["train/cycle_pairs"] <= 1
    loss.backward()
    assert first_conv(method.backbone).weight.grad is not None
    assert method.ir_stem is None


def test_mmgl_two_stream_uses_a_separate_infrared_stem() -> None:
    torch.manual_seed(0)
    method = mmgl(two_stream=True).eval()
    rgb, ir = torch.randn(2, 3, 32, 16), torch.randn(2, 3, 32, 16)
    before = method.feature_maps(rgb, ir)
    assert method.ir_stem is not None
    with torch.no_grad():
        first_conv(method.ir_stem).weight.add_(1.0)
    after = method.feature_maps(rgb, ir)
    assert torch.equal(before[:2], after[:2]) and not torch.allclose(before[2:], after[2:])
    state, rgb_state = method.ir_backbone_state(), method.backbone.state_dict()
    changed = {key for key in state if not torch.equal(state[key], rgb_state[key])}
    assert changed and all(key.split(".")[0] in STEM for key in changed)


def test_mmgl_needs_reid_views_and_a_resnet_for_two_streams() -> None:
    config = RunConfig.model_validate(
        {"method": {"name": "mmgl"}, "model": {"backbone": "resnet10t"}, "views": {"preset": "eo"}}
    )
    with pytest.raises(DomainSSLError, match="views.preset=reid"):
        MMGL(config, ["r", "g", "b"], [0.0] * 3, [1.0] * 3)
    with pytest.raises(DomainSSLError, match="ResNet-family"):
        config = RunConfig.model_validate(
            {
                "model": {"backbone": "vit_tiny_patch16_224"},
                "views": {"preset": "reid"},
                "method": {"name": "mmgl", "two_stream": True},
            }
        )
        MMGL(config, ["r", "g", "b"], [0.0] * 3, [1.0] * 3)
    with pytest.raises(DomainSSLError, match="is a ViT"):
        config = RunConfig.model_validate(
            {"model": {"backbone": "vit_tiny_patch16_224", "timm_kwargs": {"img_size": 32}},
             "views": {"preset": "reid"}, "method": {"name": "mmgl"}}
        )  # fmt: skip
        MMGL(config, ["r", "g", "b"], [0.0] * 3, [1.0] * 3)
