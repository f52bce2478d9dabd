"""Crash and resume: SIGKILL mid-epoch then ``--resume`` equals an uninterrupted run;
SIGTERM / SIGINT save a checkpoint before exiting.

Runs go through the real CLI in subprocesses; ``STOPPER`` sends the signal to the process
itself at a fixed optimizer step, so the kill point is deterministic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from domainssl.checkpointing import LAST_CHECKPOINT

STOPPER = """
import os, signal, sys
from domainssl.checkpointing import PeriodicCheckpoint
from domainssl.cli import app
step, signum = int(os.environ["STOP_AT_STEP"]), int(os.environ["STOP_SIGNAL"])
batch_end = PeriodicCheckpoint.on_train_batch_end
def stopping(self, trainer, *args):
    batch_end(self, trainer, *args)
    if trainer.global_step == step:
        os.kill(os.getpid(), signum)
PeriodicCheckpoint.on_train_batch_end = stopping
app(sys.argv[1:], prog_name="domainssl")
"""
EPOCHS, STEPS_PER_EPOCH = 3, 3  # 12 chips, batches of 4


def pretrain_args(data: Path, out: Path, name: str, *sets: str) -> list[str]:
    from conftest import FAST

    skip = ("data.batch_size", "trainer.epochs")
    fast = [f"--set={item}" for item in FAST if not item.startswith(skip)]
    return [
        "pretrain", "--domain", "eo", "--method", "simclr", "--data", str(data),
        "--out", str(out), "--name", name, "--epochs", str(EPOCHS), *fast,
        "--set=data.batch_size=4", *[f"--set={item}" for item in sets],
    ]  # fmt: skip


def run(args: list[str], stop: tuple[int, int] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if stop is None:
        command = [sys.executable, "-m", "domainssl", *args]
    else:
        env |= {"STOP_AT_STEP": str(stop[0]), "STOP_SIGNAL": str(int(stop[1]))}
        command = [sys.executable, "-c", STOPPER, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def checkpoint_step(run_dir: Path) -> int:
    return int(torch.load(run_dir / LAST_CHECKPOINT, weights_only=True)["global_step"])


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(
    tif_chips: Path, tmp_path: Path
) -> None:
    whole = run(pretrain_args(tif_chips, tmp_path, "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run(pretrain_args(tif_chips, tmp_path, "killed"), stop=(5, signal.SIGKILL))
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "killed"
    assert not (run_dir / "backbone.safetensors").exists()
    assert checkpoint_step(run_dir) == STEPS_PER_EPOCH  # the epoch-0 checkpoint survived
    resumed = run(["pretrain", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint_step(run_dir) == EPOCHS * STEPS_PER_EPOCH
    expected = load_file(tmp_path / "whole" / "backbone.safetensors")
    got = load_file(run_dir / "backbone.safetensors")
    assert expected.keys() == got.keys()
    differing = [key for key in expected if not torch.equal(expected[key], got[key])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)]
)
def test_signal_saves_checkpoint_then_resume_finishes(
    signum: signal.Signals, tif_chips: Path, tmp_path: Path
) -> None:
    args = pretrain_args(tif_chips, tmp_path, "stopped", "trainer.checkpoint_every_n_epochs=10")
    stopped = run(args, stop=(2, signum))
    run_dir = tmp_path / "stopped"
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 128 + signum, output[-3000:]
    assert "saved" in output and "--resume" in output, output[-3000:]
    assert checkpoint_step(run_dir) == 2  # saved by the signal, not by the schedule
    assert not (run_dir / "backbone.safetensors").exists()
    report = (run_dir / "report.md").read_text()
    assert "it was stopped (SIGTERM / Ctrl-C) and checkpointed: 0 epochs, 2 steps" in report
    assert f"domainssl pretrain --resume {run_dir}" in report and "No export yet" in report
    resumed = run(["pretrain", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint_step(run_dir) == EPOCHS * STEPS_PER_EPOCH
    assert (run_dir / "backbone.safetensors").is_file()
    report = (run_dir / "report.md").read_text()
    assert f"its last epoch was done: {EPOCHS} epochs, 9 steps" in report
    assert "over 2 sessions" in report and (run_dir / "curves.png").is_file()
    steps = [row.split(",")[1] for row in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert "0" in steps and "8" in steps  # both sessions' rows in the curves


def test_step_interval_writes_checkpoints(tif_chips: Path, tmp_path: Path) -> None:
    args = pretrain_args(
        tif_chips, tmp_path, "steps", "trainer.checkpoint_every_n_steps=4",
        "trainer.checkpoint_every_n_epochs=10",
    )  # fmt: skip
    stopped = run(args, stop=(6, signal.SIGKILL))
    assert stopped.returncode == -signal.SIGKILL
    assert checkpoint_step(tmp_path / "steps") == 4
