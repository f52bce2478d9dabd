"""Several GPUs in one process: each batch split across them (one model, one output)."""

from __future__ import annotations

import torch
from torch import nn

from domainssl.errors import DomainSSLError


def require_devices(devices: int) -> None:
    """Fail before any work when ``devices`` (>1) GPUs are asked for but not visible."""
    if devices < 1 or (devices > 1 and torch.cuda.device_count() < devices):
        raise DomainSSLError(
            f"--devices {devices} but {torch.cuda.device_count()} CUDA devices are visible: "
            "ask for at least 1 and at most that many."
        )


def spread(network: nn.Module, devices: int) -> nn.Module:
    """``network`` splitting each batch across the first ``devices`` CUDA devices
    (``nn.DataParallel``; the weights stay in ``network``); itself for one device."""
    require_devices(devices)
    if devices == 1:
        return network
    return nn.DataParallel(network, device_ids=list(range(devices)))
