"""Several processes: each reads its own samples with its own views, data is prepared once,
a 2-process run resumes bit for bit, SLURM job steps need a name, MoCo's shuffle-BN keeps
each key with its sample, and a replica mismatch still exports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fixtures import write_chip_folder, write_scene
from safetensors.torch import load_file
from typer.testing import CliRunner

import domainssl.methods  # noqa: F401  (registers the methods and view presets)
from domainssl.cli import app
from domainssl.config import load_config
from domainssl.data.datamodule import PretrainDataModule
from domainssl.losses.gather import shuffle_across_ranks, unshuffle_across_ranks
from domainssl.methods.base import REPLICA_MISMATCH
from domainssl.methods.simclr import SimCLR
from domainssl.views.presets import build_views

SMALL = ["model.backbone=resnet10t", "data.sample_size=32", "data.batch_size=4",
         "data.num_workers=0", "data.stats_samples=16", "data.samples_per_epoch=16",
         "views.crop_size=16", "method.proj_hidden_dim=16", "method.proj_dim=8"]  # fmt: skip


def first_batch_worker(rank: int, init_file: str, data: str, run_dir: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    config = load_config("eo", "simclr", overrides={"data.path": data}, sets=SMALL)
    datamodule = PretrainDataModule(config, Path(run_dir))
    datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=0)  # type: ignore[assignment]
    if rank == 0:
        datamodule.prepare_data()
    dist.barrier()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    stats = datamodule.data.stats
    views = build_views(config.views, stats.mean, stats.std)
    same_image = torch.linspace(0, 255, 4 * 32 * 32).reshape(1, 4, 32, 32)
    torch.save({"images": batch["image"], "view": views(same_image)}, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["chips", "scene"])
def test_two_ranks_read_different_samples_and_draw_different_views(
    kind: str, tmp_path: Path
) -> None:
    if kind == "chips":
        data = write_chip_folder(tmp_path / "chips", bands=4)
    else:
        data = write_scene(tmp_path / "scene.tif", height=96, width=96)
    args = (str(tmp_path / "init"), str(data), str(tmp_path / "run"), str(tmp_path))
    mp.spawn(first_batch_worker, args=args, nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    for image in ranks[0]["images"]:
        assert not any(torch.equal(image, other) for other in ranks[1]["images"])
    assert not torch.allclose(ranks[0]["view"], ranks[1]["view"])


def ddp_pretrain(data: Path, out: Path, name: str, epochs: int, resume: bool = False) -> None:
    command = [sys.executable, "-m", "domainssl", "pretrain"]
    if resume:
        command += ["--resume", str(out / name), "--epochs", str(epochs)]
    else:
        command += ["--data", str(data), "--out", str(out), "--name", name, "--epochs",
                    str(epochs), "--devices", "2", "--accelerator", "cpu",
                    "--set=trainer.strategy=ddp", *[f"--set={item}" for item in SMALL]]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_two_process_resume_from_an_epoch_end_equals_the_uninterrupted_run(
    tmp_path: Path,
) -> None:
    data = write_chip_folder(tmp_path / "chips", bands=4)
    ddp_pretrain(data, tmp_path, "whole", epochs=2)
    ddp_pretrain(data, tmp_path, "halves", epochs=1)
    ddp_pretrain(data, tmp_path, "halves", epochs=2, resume=True)
    whole = load_file(tmp_path / "whole" / "backbone.safetensors")
    halves = load_file(tmp_path / "halves" / "backbone.safetensors")
    differing = [key for key in whole if not torch.equal(whole[key], halves[key])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is installed with torch")  # fmt: skip
def test_torchrun_prepares_the_data_once_and_resumes(tmp_path: Path) -> None:
    data = write_chip_folder(tmp_path / "chips", bands=4)
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone",
                "--nproc-per-node", "2", "-m", "domainssl", "pretrain"]  # fmt: skip
    first = [*torchrun, "--data", str(data), "--out", str(tmp_path), "--name", "X",
             "--accelerator", "cpu", "--devices", "2", "--epochs", "1",
             *[f"--set={item}" for item in SMALL]]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(first, capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("Data prepared in") == 1, output[-3000:]
    assert (tmp_path / "X" / "backbone.safetensors").is_file()
    again = [*torchrun, "--resume", str(tmp_path / "X"), "--epochs", "2",
             "--accelerator", "cpu", "--devices", "2"]  # fmt: skip
    result = subprocess.run(again, capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("Data prepared in") == 1, output[-3000:]
    step = torch.load(tmp_path / "X" / "checkpoints" / "last.ckpt", weights_only=True)
    assert step["epoch"] == 2


def test_a_slurm_job_step_with_several_tasks_needs_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    args = ["pretrain", "--data", str(write_chip_folder(tmp_path / "c")), "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--name" in result.output and "SLURM" in result.output
    assert "Traceback" not in result.output


def shuffle_worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # each rank draws another order; rank 0's is used
    images = torch.arange(8.0).view(4, 2) + 100 * rank  # this rank's 4 samples
    shuffled, order = shuffle_across_ranks(images)
    per_sample = shuffled * 2  # a per-sample key encoder
    batch_dependent = shuffled - shuffled.mean(dim=0)  # BatchNorm-like: depends on the share
    torch.save(
        {
            "moved": not torch.equal(shuffled, images),
            "back": unshuffle_across_ranks(per_sample, order),
            "centred": unshuffle_across_ranks(batch_dependent, order),
            "images": images,
        },
        Path(out) / f"{rank}.pt",
    )
    dist.destroy_process_group()


def test_shuffle_bn_hands_out_samples_across_ranks_and_returns_each_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mp.spawn(shuffle_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    for result in ranks:
        assert torch.equal(result["back"], result["images"] * 2)  # each key with its sample
        centred_locally = result["images"] - result["images"].mean(dim=0)
        assert not torch.allclose(result["centred"], centred_locally)  # other batch statistics
    assert any(result["moved"] for result in ranks)


def test_a_replica_mismatch_still_exports_with_a_warning_and_a_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config("eo", "simclr", sets=SMALL)
    method = SimCLR(config, ["a", "b", "c", "d"], [0.0] * 4, [1.0] * 4)
    trainer = SimpleNamespace(world_size=2, is_global_zero=True, default_root_dir=str(tmp_path))
    monkeypatch.setattr(SimCLR, "trainer", property(lambda self: trainer))

    def differing(prints: list, fingerprint: str) -> None:
        prints[:] = [fingerprint, "f" * 64]

    monkeypatch.setattr(dist, "all_gather_object", differing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.on_train_end()
    assert any("REPLICA MISMATCH" in str(w.message) for w in caught)
    assert "rank 1: " + "f" * 64 in (tmp_path / REPLICA_MISMATCH).read_text()


def test_identical_replicas_write_no_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config("eo", "simclr", sets=SMALL)
    method = SimCLR(config, ["a", "b", "c", "d"], [0.0] * 4, [1.0] * 4)
    trainer = SimpleNamespace(world_size=2, is_global_zero=True, default_root_dir=str(tmp_path))
    monkeypatch.setattr(SimCLR, "trainer", property(lambda self: trainer))
    monkeypatch.setattr(dist, "all_gather_object", lambda prints, f: prints.__setitem__(
        slice(None), [f, f]))  # fmt: skip
    method.on_train_end()
    assert not (tmp_path / REPLICA_MISMATCH).exists()


def test_a_run_without_a_training_step_stops_before_training(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "scene.tif", height=96, width=96)
    args = ["pretrain", "--data", str(scene), "--out", str(tmp_path / "runs"), "--name", "z",
            *[f"--set={item}" for item in SMALL], "--set=data.samples_per_epoch=1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "no training step" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs" / "z" / "backbone.safetensors").exists()
