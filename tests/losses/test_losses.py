"""Losses against direct formulas written out loop by loop on small tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from domainssl.losses import NegativeCosineLoss, NTXentLoss, QueueInfoNCELoss


def ntxent_reference(z0: torch.Tensor, z1: torch.Tensor, t: float) -> float:
    """SimCLR eq. (1): l(i,j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t), averaged."""
    z = F.normalize(torch.cat([z0, z1]), dim=1).double()
    n = len(z0)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[j]) / t)
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_matches_formula(temperature: float) -> None:
    torch.manual_seed(0)
    z0, z1 = torch.randn(5, 7), torch.randn(5, 7)
    loss = NTXentLoss(temperature)(z0, z1)
    assert loss.item() == pytest.approx(ntxent_reference(z0, z1, temperature), rel=1e-5)


def test_ntxent_perfect_pairs_beat_random() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    assert NTXentLoss(0.1)(z, z) < NTXentLoss(0.1)(z, torch.randn(8, 16))


def test_ntxent_shape_check() -> None:
    with pytest.raises(ValueError, match="one shape"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))


def test_negative_cosine_matches_formula_and_stops_target_gradient() -> None:
    torch.manual_seed(0)
    p = torch.randn(4, 6, requires_grad=True)
    z = torch.randn(4, 6, requires_grad=True)
    loss = NegativeCosineLoss()(p, z)
    expected = (
        sum(2 - 2 * float(p[i] @ z[i]) / float(p[i].norm() * z[i].norm()) for i in range(4)) / 4
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert p.grad is not None and z.grad is None


def test_queue_infonce_matches_formula() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(3, 5), torch.randn(3, 5)
    queue = F.normalize(torch.randn(6, 5), dim=1)
    t = 0.2
    loss = QueueInfoNCELoss(t)(q, k, queue)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    expected = 0.0
    for i in range(3):
        positive = math.exp(float(qn[i] @ kn[i]) / t)
        negatives = sum(math.exp(float(qn[i] @ queue[j]) / t) for j in range(6))
        expected += -math.log(positive / (positive + negatives))
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
