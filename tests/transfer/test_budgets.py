"""Fine-tune schedules that end with whichever limit ends first: epochs or --max-time."""

from __future__ import annotations

import math

import torch

from domainssl.transfer.classification.finetune import cosine_factor


def test_cosine_factor_on_steps_equals_torch_cosine_annealing() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 20)
    for step in range(20):
        assert math.isclose(cosine_factor(step, 20, 0.0, None), optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()


def test_cosine_factor_follows_the_time_budget_when_it_ends_first() -> None:
    assert cosine_factor(10, 1000, elapsed=30.0, max_time_s=60.0) == 0.5  # half the time
    assert cosine_factor(10, None, elapsed=60.0, max_time_s=60.0) == 0.0
    assert cosine_factor(500, 1000, elapsed=1.0, max_time_s=60.0) == 0.5  # steps lead
