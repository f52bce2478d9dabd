"""Multi-process correctness on 2 CPU processes (gloo).

NT-Xent with negatives gathered across processes must give the loss and the gradients of
one process on the concatenated batch; every method run with DDP must end with identical
replicas (weights, EMA targets, MoCo queue).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from domainssl.config import RunConfig
from domainssl.losses import NTXentLoss
from domainssl.methods.moco import MoCo

BATCH, DIM, FEATURES = 8, 6, 5


def make_problem() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    torch.manual_seed(0)
    x0, x1 = torch.randn(BATCH, FEATURES), torch.randn(BATCH, FEATURES)
    return x0, x1, torch.nn.Linear(FEATURES, DIM)


def ntxent_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x0, x1, layer = make_problem()
    rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    loss = NTXentLoss(0.3)(layer(x0[rows]), layer(x1[rows]))
    loss.backward()
    grad = layer.weight.grad
    assert grad is not None
    dist.all_reduce(grad)
    grad /= 2  # what DDP does: average gradients over processes
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total / 2, "grad": grad}, Path(out_dir) / "ddp.pt")
    dist.destroy_process_group()


def test_ntxent_two_processes_match_one(tmp_path: Path) -> None:
    mp.spawn(ntxent_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "ddp.pt", weights_only=True)
    x0, x1, layer = make_problem()
    loss = NTXentLoss(0.3)(layer(x0), layer(x1))
    loss.backward()
    assert distributed["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert layer.weight.grad is not None
    assert torch.allclose(distributed["grad"], layer.weight.grad, atol=1e-6)


def moco_problem() -> tuple[MoCo, torch.Tensor, torch.Tensor, torch.nn.Linear]:
    """A tiny MoCo (its random queue seeded), inputs, keys and a layer making queries."""
    torch.manual_seed(0)
    config = RunConfig.model_validate(
        {"model": {"backbone": "resnet10t"}, "method": {"name": "moco", "proj_hidden_dim": 8,
         "proj_dim": DIM, "queue_size": 12}}
    )  # fmt: skip
    method = MoCo(config, ["a"], [0.0], [1.0])
    x, keys = torch.randn(BATCH, FEATURES), F.normalize(torch.randn(BATCH, DIM), dim=1)
    return method, x, keys, torch.nn.Linear(FEATURES, DIM)


def moco_step(
    method: MoCo, x: torch.Tensor, keys: torch.Tensor, layer: torch.nn.Linear
) -> torch.Tensor:
    """MoCo's loss against the queue, then the keys enqueued (as in ``loss_and_embedding``)."""
    loss = method.criterion(layer(x), keys, method.queue)
    method.enqueue(keys)
    return loss


def moco_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    method, x, keys, layer = moco_problem()
    rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    loss = moco_step(method, x[rows], keys[rows], layer)
    loss.backward()
    grad = layer.weight.grad
    assert grad is not None
    dist.all_reduce(grad)
    grad /= 2  # DDP averages gradients over processes
    total = loss.detach().clone()
    dist.all_reduce(total)
    result = {"loss": total / 2, "grad": grad, "queue": method.queue}
    torch.save(result, Path(out_dir) / f"moco{rank}.pt")
    dist.destroy_process_group()


def test_moco_two_processes_match_one(tmp_path: Path) -> None:
    """Same loss and gradient as one process on the whole batch; same queue on every rank."""
    mp.spawn(moco_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"moco{rank}.pt", weights_only=True) for rank in (0, 1)]
    method, x, keys, layer = moco_problem()
    queue_before = method.queue.clone()
    loss = moco_step(method, x, keys, layer)
    loss.backward()
    assert layer.weight.grad is not None
    assert ranks[0]["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert torch.allclose(ranks[0]["grad"], layer.weight.grad, atol=1e-6)
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])
    assert torch.equal(ranks[0]["queue"], method.queue)
    assert torch.equal(method.queue, torch.cat([keys, queue_before])[:12])  # newest first


ORL_FAST = [
    "method.orl_neighbors=3",
    "views.proposal_method=grouping",
    "views.proposal_min_side=6",
    "trainer.limit_train_batches=2",
]


@pytest.mark.parametrize(
    "method",
    [
        "simclr",
        "moco",
        "byol",
        "simsiam",
        pytest.param("densecl", marks=pytest.mark.slow),
        pytest.param("orl", marks=pytest.mark.slow),
    ],
)
def test_ddp_run_keeps_replicas_identical(method: str, tif_chips: Path, tmp_path: Path) -> None:
    """MMGL's DDP run is in test_reid_cli.py (it needs re-ID data)."""
    from conftest import fast

    command = [
        sys.executable,
        "-m",
        "domainssl",
        "pretrain",
        "--domain",
        "eo",
        "--method",
        method,
        "--data",
        str(tif_chips),
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--out",
        str(tmp_path),
        "--name",
        "ddp",
        "--epochs",
        "2",
        *[f"--set={item}" for item in fast(method) if not item.startswith("trainer.epochs")],
        "--set=trainer.strategy=ddp",
        "--set=data.batch_size=4",
        *[f"--set={item}" for item in (ORL_FAST if method == "orl" else [])],
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    stages = 2 if method == "orl" else 1  # ORL trains twice: stage 1 and stage 3
    assert output.count("weights identical on 2 processes") == stages, output[-3000:]
    assert (tmp_path / "ddp" / "backbone.safetensors").is_file()
