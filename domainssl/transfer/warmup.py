"""A frozen-backbone warm-up before fine-tuning (LP-FT, Kumar et al. 2022): the new head or
decoder first trains on the frozen pretrained backbone for a share of the budget, then the
whole network is fine-tuned, so the new layer's large early gradients do not wash out the
pretrained weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from domainssl.data.samplers import Shard
from domainssl.transfer.processes import replicate


@dataclass(frozen=True)
class WarmupEnd:
    """When a warm-up of ``share`` of the budget ends: after that share of the epochs' steps
    or of the time budget, whichever comes first."""

    share: float
    epochs: int | None
    max_time_s: float | None
    steps_per_epoch: int

    def reached(self, steps: int, seconds: float) -> bool:
        """Whether the warm-up is over after ``steps`` optimizer steps and ``seconds``."""
        total = None if self.epochs is None else self.epochs * self.steps_per_epoch
        by_steps = total is not None and steps >= self.share * total
        by_time = self.max_time_s is not None and seconds >= self.share * self.max_time_s
        return by_steps or by_time


def unfreeze(
    backbone: nn.Module, model: nn.Module, shard: Shard, device: torch.device
) -> nn.Module:
    """Let ``backbone`` (part of ``model``) train again; returns a new replica of ``model``
    whose DDP gradient sync includes it. The random stream is left where it was (DDP's
    set-up draws from it), so 1 and N processes keep drawing the same augmentations."""
    backbone.requires_grad_(True).train()
    state = torch.get_rng_state()
    forward = replicate(model, shard, device)
    torch.set_rng_state(state)
    return forward
