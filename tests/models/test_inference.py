"""Networks prepared for inference: batch norms folded only where a conv feeds them alone,
outputs unchanged to float rounding, untraceable networks left as they are."""

from __future__ import annotations

import copy

import torch
from torch import nn

from domainssl.models.backbones import create_backbone
from domainssl.models.inference import for_inference


def norms(network: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())


def test_a_resnet_loses_its_batch_norms_and_keeps_its_outputs() -> None:
    torch.manual_seed(0)
    network = create_backbone("resnet10t", 3, True)
    for module in network.modules():  # non-trivial statistics, so that folding matters
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    images = torch.randn(4, 3, 32, 32)
    expected = network.eval()(images)
    prepared = for_inference(copy.deepcopy(network))
    assert norms(network) > 0 and norms(prepared) == 0
    torch.testing.assert_close(prepared(images), expected, rtol=1e-4, atol=1e-5)


class NormBeforeConv(nn.Module):
    """Pre-activation order, and a conv whose output feeds two places: nothing to fold."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 3, 3, padding=1)
        self.shared, self.after = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shared(self.conv(self.norm(x)))
        return self.after(y) + y


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x)) if x.sum() > 0 else x


def test_only_a_conv_feeding_a_norm_alone_is_folded_and_untraceable_code_is_kept() -> None:
    for network in (NormBeforeConv(), DataDependent()):
        images = torch.rand(2, 3, 8, 8)
        expected = network.eval()(images)
        prepared = for_inference(network)
        assert norms(prepared) == 2 if isinstance(network, NormBeforeConv) else 1
        torch.testing.assert_close(prepared(images), expected)
