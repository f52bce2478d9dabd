"""DenseCL: the dense loss against its formula written out loop by loop (correspondence
included), 2 gloo processes against 1 on the joined batch, and short runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from conftest import fast
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.config import RunConfig
from domainssl.errors import DomainSSLError
from domainssl.losses.dense_infonce import DenseInfoNCELoss, match_locations, push_keys
from domainssl.methods.densecl import DenseCL


def dense_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    qf: torch.Tensor,
    kf: torch.Tensor,
    queue: torch.Tensor,
    t: float,
) -> float:
    """DenseCL eq. (2) as the released code computes it, one query location at a time: the
    positive is the key location with the most cosine-similar *backbone* feature."""
    b, _, h, w = q.shape
    key_locations = [(y, x) for y in range(k.shape[2]) for x in range(k.shape[3])]

    def cos(u: torch.Tensor, v: torch.Tensor) -> float:
        return float(u.double() @ v.double()) / (
            float(u.double().norm()) * float(v.double().norm())
        )

    total = 0.0
    for n in range(b):
        for i in range(h):
            for j in range(w):
                scores = [cos(qf[n, :, i, j], kf[n, :, y, x]) for y, x in key_locations]
                y, x = key_locations[max(range(len(scores)), key=scores.__getitem__)]
                positive = math.exp(cos(q[n, :, i, j], k[n, :, y, x]) / t)
                negatives = sum(math.exp(cos(q[n, :, i, j], row) / t) for row in queue)
                total += -math.log(positive / (positive + negatives))
    return total / (b * h * w)


@pytest.mark.parametrize("temperature", [0.2, 0.5])
def test_dense_loss_matches_formula(temperature: float) -> None:
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 3, 2)  # key grid differs from query's
    qf, kf = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 3, 2)
    queue = F.normalize(torch.randn(5, 3), dim=1)
    loss = DenseInfoNCELoss(temperature)(q, k, qf, kf, queue)
    expected = dense_reference(q, k, qf, kf, queue, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_correspondence_comes_from_backbone_features_not_projections() -> None:
    torch.manual_seed(0)
    qf = torch.randn(2, 6, 4)  # (B, C, S): 4 locations
    perm = torch.tensor([[2, 0, 3, 1], [1, 3, 0, 2]])  # query location s sits at key perm[s]
    kf = torch.empty_like(qf)
    for n in range(2):
        kf[n, :, perm[n]] = qf[n] * (1 + torch.rand(4))  # rescaled: cosine still picks it
    assert torch.equal(match_locations(qf, kf), perm)
    # Projections identical location by location, backbone features permuted: the positive
    # follows the backbone features, so the loss is that of the permuted projections.
    q = torch.randn(2, 3, 2, 2)
    queue = F.normalize(torch.randn(7, 3), dim=1)
    loss = DenseInfoNCELoss(0.2)
    moved = loss(q, q, qf.view(2, 6, 2, 2), kf.view(2, 6, 2, 2), queue)
    aligned_keys = torch.stack([q[n].flatten(1)[:, perm[n]] for n in range(2)]).view(2, 3, 2, 2)
    assert moved.item() == pytest.approx(
        loss(q, aligned_keys, qf.view(2, 6, 2, 2), qf.view(2, 6, 2, 2), queue).item(), rel=1e-6
    )
    assert moved > loss(q, q, qf.view(2, 6, 2, 2), qf.view(2, 6, 2, 2), queue) + 0.5


def test_dense_loss_shape_checks_and_float32_under_autocast() -> None:
    loss = DenseInfoNCELoss(0.2)
    q, f, queue = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2), torch.randn(5, 3)
    with pytest.raises(ValueError, match="one B and D"):
        loss(q, torch.randn(2, 5, 2, 2), f, f, queue)
    with pytest.raises(ValueError, match="backbone maps"):
        loss(q, q, f, torch.randn(2, 4, 3, 3), queue)
    with pytest.raises(ValueError, match="queue"):
        loss(q, q, f, f, torch.randn(5, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(q.bfloat16(), q.bfloat16(), f.bfloat16(), f.bfloat16(), queue)
    assert low.dtype == torch.float32


def test_push_keys_puts_the_newest_first_and_keeps_the_length() -> None:
    queue, keys = torch.randn(5, 3), torch.randn(2, 3)
    pushed = push_keys(queue, keys)
    assert torch.equal(pushed, torch.cat([keys, queue[:3]]))


def tiny_config(**method: object) -> RunConfig:
    return RunConfig.model_validate(
        {"model": {"backbone": "resnet10t", "small_input": True},
         "method": {"name": "densecl", "proj_hidden_dim": 8, "proj_dim": 6, "queue_size": 12,
                    "dense_queue_size": 10, **method}}
    )  # fmt: skip


BATCH = 8


def densecl_problem() -> tuple[DenseCL, torch.Tensor, torch.Tensor]:
    """A tiny DenseCL in eval mode (BatchNorm per sample, so that any split of the batch
    gives the same outputs) and two views whose backbone maps are 2x2."""
    torch.manual_seed(0)
    method = DenseCL(tiny_config(), ["a"], [0.0], [1.0]).eval()
    return method, torch.randn(BATCH, 1, 32, 32), torch.randn(BATCH, 1, 32, 32)


def densecl_step(method: DenseCL, view0: torch.Tensor, view1: torch.Tensor) -> dict:
    """One step: loss, the parameter gradients (flattened) and both queues after it."""
    loss, _ = method.loss_and_embedding(view0, view1)
    loss.backward()
    grads = [p.grad.flatten() for p in method.parameters() if p.grad is not None]
    return {"loss": loss.detach(), "grad": torch.cat(grads), "queue": method.queue,
            "dense_queue": method.dense_queue, "parts": method.parts}  # fmt: skip


def unshuffled_keys(method: DenseCL, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The key encoder's outputs on ``images`` as they are, without shuffle-BN."""
    with torch.no_grad():
        pooled, grid = method.encode(method.key_backbone, images)
        global_keys = F.normalize(method.key_projector(pooled), dim=1)
        return global_keys, method.key_dense_projector(grid), grid


def test_keys_come_back_in_the_order_of_their_images() -> None:
    """Shuffle-BN on one process: the key batch is shuffled and split in two, and every
    key returns to its own image (eval mode: BatchNorm does not depend on the split)."""
    method, _, view1 = densecl_problem()
    for got, want in zip(method.keys(view1), unshuffled_keys(method, view1), strict=True):
        assert got.shape[0] == BATCH and torch.allclose(got, want, atol=1e-5)


def densecl_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    method, view0, view1 = densecl_problem()
    rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    result = densecl_step(method, view0[rows], view1[rows])
    for name in ("loss", "grad"):
        dist.all_reduce(result[name])
        result[name] /= 2  # DDP averages gradients over processes
    result["keys"] = method.keys(view1[rows])  # shuffled across ranks and back
    torch.save(result, Path(out_dir) / f"densecl{rank}.pt")
    dist.destroy_process_group()


def test_densecl_two_processes_match_one(tmp_path: Path) -> None:
    """Keys shuffled across processes and unshuffled, both queues filled with the gathered
    keys: loss, gradients and queues equal those of one process on the whole batch."""
    mp.spawn(densecl_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"densecl{rank}.pt", weights_only=True) for rank in (0, 1)]
    method, view0, view1 = densecl_problem()
    before = method.queue.clone(), method.dense_queue.clone()
    single = densecl_step(method, view0, view1)
    assert ranks[0]["loss"].item() == pytest.approx(single["loss"].item(), rel=1e-5)
    assert torch.allclose(ranks[0]["grad"], single["grad"], rtol=1e-4, atol=1e-6)
    for name, old in zip(("queue", "dense_queue"), before, strict=True):
        assert torch.equal(ranks[0][name], ranks[1][name])
        assert torch.allclose(ranks[0][name], single[name], atol=1e-6)
        assert torch.equal(single[name][BATCH:], old[: len(old) - BATCH])  # newest first
    direct = unshuffled_keys(method, view1)
    for rank in (0, 1):
        rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        for got, want in zip(ranks[rank]["keys"], direct, strict=True):
            assert torch.allclose(got, want[rows], atol=1e-5)
    parts = single["parts"]  # (1 - λ) global + λ dense, λ = 0.5
    total = 0.5 * (parts["train/loss_global"] + parts["train/loss_dense"])
    assert single["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_densecl_key_encoder_is_the_ema_of_backbone_and_both_heads() -> None:
    torch.manual_seed(0)
    method = DenseCL(tiny_config(momentum=0.5), ["a"], [0.0], [1.0])
    online = [method.backbone, method.projector, method.dense_projector]
    keys = [method.key_backbone, method.key_projector, method.key_dense_projector]
    with torch.no_grad():
        for module in online:
            for p in module.parameters():
                p.add_(1.0)
    before = [[p.clone() for p in module.parameters()] for module in keys]
    method.loss_and_embedding(torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32))
    for old, key, net in zip(before, keys, online, strict=True):
        for o, k, n in zip(old, key.parameters(), net.parameters(), strict=True):
            assert not k.requires_grad
            assert torch.allclose(k, 0.5 * o + 0.5 * n)


def test_densecl_refuses_a_vit() -> None:
    config = RunConfig.model_validate(
        {"model": {"backbone": "vit_tiny_patch16_224"}, "method": {"name": "densecl"}}
    )
    with pytest.raises(DomainSSLError, match="is a ViT"):
        DenseCL(config, ["a"], [0.0], [1.0])


def test_densecl_warns_when_the_map_has_one_location() -> None:
    torch.manual_seed(0)
    method = DenseCL(tiny_config(), ["a"], [0.0], [1.0])
    with pytest.warns(UserWarning, match="16 px views is 1x1"):
        method.loss_and_embedding(torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16))


def test_densecl_cli_run_exports_a_backbone(tif_chips: Path, tmp_path: Path) -> None:
    sets = [*fast("densecl"), "views.crop_size=32", "trainer.limit_train_batches=2"]
    args = ["pretrain", "--method", "densecl", "--data", str(tif_chips), "--out", str(tmp_path),
            "--name", "dense", *[f"--set={s}" for s in sets]]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dense" / "backbone.safetensors").is_file()
    saved = yaml.safe_load((tmp_path / "dense" / "config.yaml").read_text())
    assert saved["method"]["name"] == "densecl" and saved["method"]["dense_weight"] == 0.5
