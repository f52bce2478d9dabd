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

from domainssl.losses import NTXentLoss

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


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam"])
def test_ddp_run_keeps_replicas_identical(method: str, tif_chips: Path, tmp_path: Path) -> None:
    from conftest import FAST

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
        *[f"--set={item}" for item in FAST if not item.startswith("trainer.epochs")],
        "--set=trainer.strategy=ddp",
        "--set=data.batch_size=4",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "weights identical on 2 processes" in output
    assert (tmp_path / "ddp" / "backbone.safetensors").is_file()
