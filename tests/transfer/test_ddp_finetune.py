"""Fine-tuning on several processes (DDP, 2 CPU processes with gloo): the trained weights
equal one process's on the joined batches, and segmentation trains and reports once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import write_chip_folder, write_segmentation_folder
from test_segment import make_meta, whole_set
from test_transfer import exported_run
from torch import nn

from domainssl.data.labeled import load_labeled
from domainssl.transfer.classification.finetune import FinetuneConfig, finetune
from domainssl.transfer.classification.model import Classifier
from domainssl.transfer.segmentation.model import build_segmenter
from domainssl.transfer.segmentation.training import SegmentTrainConfig, fit_segmenter


def batchnorm_free_classifier(channels: int, size: int, classes: int) -> Classifier:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 8), nn.ReLU())
    return Classifier(backbone, nn.Linear(8, classes), multilabel=False)


@pytest.mark.parametrize("frozen_warmup", [0.0, 0.2])  # 0.2: unfrozen within epoch 1
def test_two_process_fine_tuning_equals_one_process_on_the_joined_batches(
    tmp_path: Path, frozen_warmup: float
) -> None:
    data = load_labeled(write_chip_folder(tmp_path / "chips", per_class=12), 8, 4)
    inputs = data.images.float() / 1000.0  # (N, 4, 8, 8)
    weights = {}
    scores = {}
    for devices in (1, 2):
        model = batchnorm_free_classifier(4, 8, len(data.classes))
        config = FinetuneConfig(
            epochs=3, batch_size=4, lr=1e-2, frozen_warmup=frozen_warmup, devices=devices
        )
        scores[devices] = finetune(model, inputs, data, config)
        weights[devices] = model.state_dict()
    initial = batchnorm_free_classifier(4, 8, len(data.classes)).state_dict()
    assert not torch.equal(weights[1]["backbone.1.weight"], initial["backbone.1.weight"])
    for key, value in weights[1].items():
        assert torch.allclose(value, weights[2][key], atol=1e-5), key
    assert abs(scores[1] - scores[2]) < 1e-6


def test_two_process_segmentation_fine_tuning_trains_and_summarises_once(tmp_path: Path) -> None:
    data = whole_set(write_segmentation_folder(tmp_path, count=4, size=32))
    meta = make_meta(small_input=False)
    torch.manual_seed(0)
    model = build_segmenter(meta, 2, None, decoder_width=16)
    before = model.head.weight.detach().clone()
    config = SegmentTrainConfig(tile=32, epochs=2, batch_size=2, devices=2)
    summary = fit_segmenter(model, meta, data, config, device="cpu")
    assert summary.steps == 2 and len(summary.epoch_losses) == 2  # 4 tiles: 2 per process
    assert all(loss == loss for loss in summary.epoch_losses)  # finite, not NaN
    assert not torch.equal(model.head.weight, before)


def test_two_process_segmentation_unfreezes_the_encoder_after_the_warmup(tmp_path: Path) -> None:
    data = whole_set(write_segmentation_folder(tmp_path, count=4, size=32))
    meta = make_meta(small_input=False)
    torch.manual_seed(0)
    model = build_segmenter(meta, 2, None, decoder_width=16)
    before = {k: v.detach().clone() for k, v in model.encoder.named_parameters()}
    config = SegmentTrainConfig(tile=32, epochs=2, batch_size=2, devices=2, frozen_warmup=0.5)
    summary = fit_segmenter(model, meta, data, config, device="cpu")
    assert summary.steps == 2  # the second step, after the warm-up, trains the encoder
    assert any(not torch.equal(v, before[k]) for k, v in model.encoder.named_parameters())


def test_transfer_command_fine_tunes_on_two_cpu_processes(tmp_path: Path) -> None:
    run = exported_run(tmp_path / "run", bands=4)
    data = write_chip_folder(tmp_path / "chips", per_class=8)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "domainssl", "transfer", str(run), "--data", str(data),
               "--protocol", "finetune", "--epochs", "1", "--batch-size", "4",
               "--accelerator", "cpu", "--devices", "2", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert result.stdout.count("Test accuracy") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "finetune" and 0 <= metrics["accuracy"] <= 1
