"""Mixed precision: losses compute in float32 under autocast, bf16-mixed trains every method
on the CPU, and float16 on the CPU is refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import fast
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.config import RunConfig
from domainssl.losses import NegativeCosineLoss, NTXentLoss, QueueInfoNCELoss
from domainssl.methods.registry import METHODS

SCENE_METHODS = ["simclr", "moco", "byol", "simsiam"]


def test_losses_return_float32_from_bfloat16_inputs_under_autocast() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    queue = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    exact = [NTXentLoss(0.1)(a, b), NegativeCosineLoss()(a, b), QueueInfoNCELoss(0.1)(a, b, queue)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = [
            NTXentLoss(0.1)(a.bfloat16(), b.bfloat16()),
            NegativeCosineLoss()(a.bfloat16(), b.bfloat16()),
            QueueInfoNCELoss(0.1)(a.bfloat16(), b.bfloat16(), queue),
        ]
    for full, mixed in zip(exact, low, strict=True):
        assert mixed.dtype == torch.float32
        assert mixed.item() == pytest.approx(full.item(), rel=2e-2)


@pytest.mark.parametrize("name", SCENE_METHODS)
def test_bf16_autocast_loss_is_finite_and_close_to_float32_on_the_same_batch(name: str) -> None:
    config = RunConfig.model_validate(
        {"model": {"backbone": "resnet10t"}, "views": {"crop_size": 16},
         "method": {"name": name, "proj_hidden_dim": 32, "proj_dim": 16}}
    )  # fmt: skip
    torch.manual_seed(0)
    method = METHODS[name].module(config, ["r", "g", "b"], [0.0] * 3, [1.0] * 3).train()
    view0, view1 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    torch.manual_seed(1)
    exact, _ = method.loss_and_embedding(view0, view1)
    method.load_state_dict(state)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = method.loss_and_embedding(view0, view1)
    assert torch.isfinite(mixed) and mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(exact.item(), rel=5e-2, abs=2e-2)


@pytest.mark.parametrize("name", SCENE_METHODS)
def test_bf16_mixed_pretraining_runs_on_the_cpu(name: str, tif_chips: Path, tmp_path: Path) -> None:
    args = ["pretrain", "--method", name, "--data", str(tif_chips), "--out", str(tmp_path),
            "--name", name, "--precision", "bf16-mixed"]  # fmt: skip
    sets = [*fast(name), "trainer.limit_train_batches=2"]
    result = CliRunner().invoke(app, args + [f"--set={s}" for s in sets])
    assert result.exit_code == 0, result.output
    assert (tmp_path / name / "backbone.safetensors").is_file()


def test_float16_on_the_cpu_is_refused(tif_chips: Path, tmp_path: Path) -> None:
    args = ["pretrain", "--data", str(tif_chips), "--out", str(tmp_path / "runs"),
            "--accelerator", "cpu", "--precision", "16-mixed"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "needs a CUDA GPU" in result.output and "bf16-mixed" in result.output
    assert not (tmp_path / "runs").exists()
