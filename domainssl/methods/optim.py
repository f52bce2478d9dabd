"""Optimizers (SGD, LARS, AdamW) and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from domainssl.config import OptimizerConfig


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise adaptive rate scaling (You et al. 2017), as used by SimCLR/BYOL.

    Groups with ``lars=False`` (biases, norm layers) are plain SGD with momentum.
    """

    def __init__(
        self,
        params: Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "lars": True,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad.add(param, alpha=group["weight_decay"])
                if group["lars"]:
                    param_norm, update_norm = param.norm(), update.norm()
                    trust = group["trust_coefficient"] * param_norm / update_norm
                    scale = torch.where((param_norm > 0) & (update_norm > 0), trust, 1.0)
                    update = update * scale
                state = self.state[param]
                buffer = state.setdefault("momentum_buffer", torch.zeros_like(param))
                buffer.mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])
        return loss


def layer_of(name: str, layers: int) -> int:
    """Depth of a parameter for layer-wise decay: a ViT backbone's embeddings 0, its block i
    i + 1, everything else (final norm, heads) ``layers`` + 1."""
    if name.startswith(("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed",
                        "backbone.reg_token")):  # fmt: skip
        return 0
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    return layers + 1


def parameter_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None
) -> list[dict]:
    """Weights decay (and get LARS scaling); biases and norm parameters (1-D) do not. With
    ``layer_decay`` and a ViT backbone (``backbone.blocks``), each group's ``lr_scale`` is
    ``layer_decay ** (layers + 1 - depth)`` (BEiT, MAE fine-tuning): the embeddings learn
    least, the heads at the full rate."""
    blocks = getattr(getattr(model, "backbone", None), "blocks", None)
    layers = len(blocks) if isinstance(blocks, nn.Sequential) else None
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = 0 if layer_decay is None or layers is None else layer_of(name, layers)
        scale = (
            1.0 if layer_decay is None or layers is None else layer_decay ** (layers + 1 - depth)
        )
        decays = param.ndim > 1
        group = groups.setdefault((depth, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0, "lars": decays,
            "lr_scale": scale,
        })  # fmt: skip
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``optimizer.name``."""
    groups = parameter_groups(model, config.weight_decay, config.layer_decay)
    if config.name == "lars":
        return LARS(groups, lr=config.lr, momentum=config.momentum)
    for group in groups:
        group.pop("lars")
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_cosine(progress: float, warmup: float) -> float:
    """LR factor at ``progress`` in [0, 1]: linear warmup over ``warmup``, then cosine to 0."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / max(1 - warmup, 1e-8)))
