"""AGW supervised re-ID fine-tuning: the losses against reference formulas, the network's
parts, P x K batches with both modalities, and fine-tune end to end through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import fast
from reid_fixtures import write_generic, write_sysu
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.data.reid import IR, RGB, IdentityBalancedSampler, read_sysu, sysu_ids
from domainssl.losses.weighted_triplet import WeightedRegularizedTriplet
from domainssl.models.backbones import create_backbone
from domainssl.models.reid_parts import GeneralizedMeanPooling, NonLocalBlock
from domainssl.transfer.reid.finetune import agw_lr_factor
from domainssl.transfer.reid.network import ReidNet

runner = CliRunner()


def reference_wrt(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AGW's Eq. 6, anchor by anchor: softmax(d) over positives, softmax(-d) over negatives."""
    losses = []
    for i in range(len(features)):
        distance = torch.linalg.vector_norm(features - features[i], dim=1)
        positive, negative = labels == labels[i], labels != labels[i]
        d_pos, d_neg = distance[positive], distance[negative]
        far = (torch.softmax(d_pos, 0) * d_pos).sum()
        near = (torch.softmax(-d_neg, 0) * d_neg).sum()
        losses.append(torch.log1p(torch.exp(far - near)))
    return torch.stack(losses).mean()


def test_weighted_regularized_triplet_matches_the_reference_formula() -> None:
    torch.manual_seed(0)
    features, labels = torch.randn(12, 8), torch.arange(4).repeat_interleave(3)
    loss = WeightedRegularizedTriplet()(features, labels)
    assert torch.allclose(loss, reference_wrt(features, labels), atol=1e-4)


def test_triplet_gradients_are_finite_for_identical_features() -> None:
    features = torch.ones(4, 3, requires_grad=True)
    WeightedRegularizedTriplet()(features, torch.tensor([0, 0, 1, 1])).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_bnneck_logits_and_label_smoothed_identity_loss_match_formulas() -> None:
    torch.manual_seed(0)
    network = ReidNet(create_backbone("resnet18", 3, False), classes=5).train()
    images, modality = torch.randn(6, 3, 64, 32), torch.tensor([RGB, RGB, RGB, IR, IR, IR])
    pooled, logits = network(images, modality)
    mean, var = pooled.mean(0), pooled.var(0, unbiased=False)
    normalized = (pooled - mean) / torch.sqrt(var + network.neck.eps)  # weight 1, bias 0
    assert torch.allclose(logits, normalized @ network.classifier.weight.T, atol=1e-4)
    target, eps = torch.tensor([0, 1, 2, 3, 4, 0]), 0.1
    log_p = logits.log_softmax(1)
    reference = ((1 - eps) * -log_p[torch.arange(6), target] - eps * log_p.mean(1)).mean()
    assert torch.allclose(F.cross_entropy(logits, target, label_smoothing=eps), reference)
    assert not network.neck.bias.requires_grad  # the BNNeck's shift stays 0


def test_gem_is_average_pooling_at_p1_and_the_power_mean_at_p3() -> None:
    maps = torch.rand(2, 4, 5, 3)
    assert torch.allclose(GeneralizedMeanPooling(1.0)(maps), maps.mean((2, 3)), atol=1e-6)
    expected = maps.pow(3).mean((2, 3)).pow(1 / 3)
    assert torch.allclose(GeneralizedMeanPooling(3.0)(maps), expected, atol=1e-5)


def test_a_new_non_local_block_is_the_identity() -> None:
    maps = torch.randn(2, 8, 6, 4)
    assert torch.equal(NonLocalBlock(8).eval()(maps), maps)


@pytest.mark.parametrize("name", ["resnet18", "resnet10t"])  # strided conv / avg-pool shortcut
def test_the_last_stage_keeps_twice_the_resolution(name: str) -> None:
    backbone = create_backbone(name, 3, False)
    before = backbone.forward_features(torch.randn(1, 3, 128, 64)).shape[-2:]  # type: ignore[operator]
    network = ReidNet(create_backbone(name, 3, False), classes=3, non_local=True)
    maps = torch.randn(1, 3, 128, 64)
    for stage in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        maps = getattr(network.backbone, stage)(maps)
    assert maps.shape[-2:] == (2 * before[0], 2 * before[1])


def test_identity_balanced_batches_hold_p_identities_with_k_images_of_each_modality(
    tmp_path: Path,
) -> None:
    root = write_sysu(tmp_path / "sysu", per_camera=1)
    images = read_sysu(root, sysu_ids(root, "train") + sysu_ids(root, "val"))
    sampler = IdentityBalancedSampler(images, p=2, k=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2  # 4 identities, 2 per batch
    for batch in batches:
        chosen = [images[i] for i in batch]
        assert len(chosen) == 2 * 2 * 3 and len({item.pid for item in chosen}) == 2
        for pid in {item.pid for item in chosen}:
            for modality in (RGB, IR):
                same = [c for c in chosen if c.pid == pid and c.modality == modality]
                assert len(same) == 3, (pid, modality)


def test_the_agw_schedule_warms_up_then_steps_down() -> None:
    assert math.isclose(agw_lr_factor(0.0), 0.1) and agw_lr_factor(0.125) == 1.0
    assert agw_lr_factor(0.3) == 0.1 and agw_lr_factor(0.7) == 0.01


REID_FAST = [*fast("mmgl", "reid"), "data.person_size=[32,16]"]


def pretrain(data: Path, out: Path, *sets: str) -> Path:
    args = ["pretrain", "--domain", "reid", "--method", "mmgl", "--data", str(data)]
    args += ["--out", str(out), "--name", "run", "--epochs", "1", "--quiet"]
    result = runner.invoke(app, args + [f"--set={s}" for s in [*REID_FAST, *sets]])
    assert result.exit_code == 0, result.output
    return out / "run"


def test_finetune_end_to_end_on_a_sysu_layout_writes_model_metrics_report_and_cmc(
    tmp_path: Path,
) -> None:
    sysu = write_sysu(tmp_path / "SYSU-MM01")
    run = pretrain(sysu, tmp_path, "method.two_stream=true")
    args = ["transfer", str(run), "--task", "reid", "--protocol", "finetune", "--data", str(sysu)]
    result = runner.invoke(
        app, [*args, "--epochs", "2", "--batch-size", "16", "--trials", "2", "--accelerator", "cpu"]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "run-reid-finetune"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["evaluations"]) == {"all", "indoor"} and metrics["two_stream"]
    assert metrics["evaluations"]["all"]["trials"] == 2
    training = metrics["training"]
    assert training["identities"] == 4 and training["epochs"] == 2  # train + val ids
    assert training["steps"] == 2 * 2 and training["batch"] == 16  # 4 ids / P=2 per epoch
    for name in ("model.safetensors", "model.json", "report.md", "cmc.png"):
        assert (out / name).is_file(), name
    info = json.loads((out / "model.json").read_text())
    assert info["task"] == "reid" and info["classes"] == 4 and info["two_stream"]
    report = (out / "report.md").read_text()
    assert "AGW recipe" in report and "| all |" in report and "| indoor |" in report
    assert "SYSU-MM01 fine-tuned: all rank-1" in result.output


def test_a_generic_folder_without_a_train_test_split_is_refused(tmp_path: Path) -> None:
    data = write_generic(tmp_path / "persons")
    run = pretrain(data, tmp_path)
    args = ["transfer", str(run), "--task", "reid", "--protocol", "finetune", "--data", str(data)]
    result = runner.invoke(app, [*args, "--epochs", "1", "--accelerator", "cpu"])
    assert result.exit_code == 2 and "train/ and test/" in result.output
