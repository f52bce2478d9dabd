"""Method internals: EMA and queue updates, momentum and LR schedules, optimizers."""

import pytest
import torch
from torch import nn

from domainssl.config import OptimizerConfig, RunConfig
from domainssl.methods.base import CollapseMonitor, ema_update, replica_fingerprint
from domainssl.methods.byol import BYOL, cosine_momentum
from domainssl.methods.moco import MoCo
from domainssl.methods.optim import LARS, build_optimizer, parameter_groups, warmup_cosine
from domainssl.methods.simclr import SimCLR


def tiny_config(name: str, **method: object) -> RunConfig:
    heads = {"proj_hidden_dim": 16, "proj_dim": 8}
    if name == "byol":
        heads["pred_hidden_dim"] = 8
    return RunConfig.model_validate(
        {
            "model": {"backbone": "resnet10t"},
            "views": {"crop_size": 16},
            "method": {"name": name, **heads, **method},
        }
    )


def test_ema_update_formula_and_buffer_copy() -> None:
    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    online_mean, target_mean = online.running_mean, target.running_mean
    assert online_mean is not None and target_mean is not None
    with torch.no_grad():
        online.weight.fill_(2.0)
        target.weight.fill_(1.0)
        online_mean.fill_(5.0)
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, torch.full((3,), 0.9 * 1 + 0.1 * 2))
    assert torch.equal(target_mean, online_mean)


def test_byol_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 1.0) == pytest.approx(1.0)


def test_byol_target_follows_online_by_ema() -> None:
    torch.manual_seed(0)
    method = BYOL(tiny_config("byol", momentum=0.5), ["a", "b"], [0.0, 0.0], [1.0, 1.0])
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target_backbone.parameters()]
    method.loss_and_embedding(torch.randn(4, 2, 16, 16), torch.randn(4, 2, 16, 16))
    for old, new, online in zip(
        before, method.target_backbone.parameters(), method.backbone.parameters(), strict=True
    ):
        assert torch.allclose(new, 0.5 * old + 0.5 * online)


def test_moco_queue_takes_newest_keys_first() -> None:
    torch.manual_seed(0)
    method = MoCo(tiny_config("moco", queue_size=10, symmetric=True), ["a"], [0.0], [1.0])
    old = method.queue.clone()
    method.loss_and_embedding(torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16))
    assert method.queue.shape == (10, 8)
    assert torch.equal(method.queue[6:], old[:4])  # 2 x 3 new keys pushed the oldest out
    assert torch.allclose(method.queue[:6].norm(dim=1), torch.ones(6), atol=1e-5)


def test_warmup_cosine_shape() -> None:
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_lars_scales_update_by_trust_ratio() -> None:
    weight = nn.Parameter(torch.full((2, 2), 3.0))  # norm 6
    weight.grad = torch.full((2, 2), 0.5)  # norm 1
    LARS([{"params": [weight], "lars": True, "weight_decay": 0.0}], lr=1.0, momentum=0.0).step()
    # trust = 0.001 * 6 / 1, step = lr * trust * grad
    assert torch.allclose(weight, torch.full((2, 2), 3.0 - 0.006 * 0.5))


def test_bias_and_norm_parameters_skip_weight_decay() -> None:
    config = OptimizerConfig().model_copy(update={"name": "sgd", "weight_decay": 0.1})
    optimizer = build_optimizer(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), config)
    decays = sorted((g["weight_decay"], len(g["params"])) for g in optimizer.param_groups)
    assert decays == [(0.0, 3), (0.1, 1)]


def test_collapse_monitor_detects_collapse() -> None:
    monitor = CollapseMonitor()
    monitor.update(torch.randn(512, 64))
    healthy = monitor.std()[1]
    monitor.reset()
    monitor.update(torch.ones(512, 64) + 1e-4 * torch.randn(512, 64))
    assert healthy > 0.8 and monitor.std()[1] < 0.01


def test_fingerprint_ignores_batchnorm_statistics_only() -> None:
    linear = nn.Linear(2, 2)
    model = nn.Sequential(linear, nn.BatchNorm1d(2))
    before = replica_fingerprint(model)
    model(torch.randn(4, 2))  # updates running stats only
    assert replica_fingerprint(model) == before
    with torch.no_grad():
        linear.weight.add_(1e-3)
    assert replica_fingerprint(model) != before


def test_moco_v2_head_is_fc_relu_fc_and_the_loss_one_directional() -> None:
    method = MoCo(tiny_config("moco", queue_size=12), ["a"], [0.0], [1.0])
    layers = [type(layer) for layer in method.projector]
    assert layers == [nn.Linear, nn.ReLU, nn.Linear]
    old = method.queue.clone()
    method.loss_and_embedding(torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16))
    assert torch.equal(method.queue[4:], old[:8])  # one view's keys entered the queue


def test_moco_keys_on_one_process_take_batchnorm_statistics_of_shuffled_halves() -> None:
    torch.manual_seed(0)
    method = MoCo(tiny_config("moco", queue_size=12), ["a"], [0.0], [1.0]).train()
    images = torch.randn(8, 1, 16, 16)
    keys = method.keys(images)
    plain = nn.functional.normalize(method.key_projector(method.key_backbone(images)), dim=1)
    assert keys.shape == plain.shape and not torch.allclose(keys, plain, atol=1e-4)
    method.settings.shuffle_bn = False
    assert torch.allclose(method.keys(images), plain, atol=1e-6)


def test_layer_decay_scales_a_vits_learning_rate_by_depth() -> None:
    config = RunConfig.model_validate(
        {"model": {"backbone": "vit_tiny_patch16_224",
                   "timm_kwargs": {"img_size": 16, "patch_size": 4, "depth": 2}},
         "views": {"crop_size": 16}, "method": {"name": "simclr"}}
    )  # fmt: skip
    method = SimCLR(config, ["a"], [0.0], [1.0])
    names = {id(p): n for n, p in method.named_parameters()}
    groups = parameter_groups(method, 0.05, layer_decay=0.5)
    scales = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scales["backbone.patch_embed.proj.weight"] == scales["backbone.pos_embed"] == 0.125
    assert scales["backbone.blocks.0.attn.qkv.weight"] == 0.25
    assert scales["backbone.blocks.1.mlp.fc1.bias"] == 0.5
    assert scales["backbone.norm.weight"] == scales["projector.0.weight"] == 1.0
    assert {g["lr_scale"] for g in parameter_groups(method, 0.05)} == {1.0}
