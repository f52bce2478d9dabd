"""How many CUDA devices a command may ask for."""

from __future__ import annotations

import torch

from domainssl.errors import DomainSSLError


def require_devices(devices: int) -> None:
    """Fail before any work when ``devices`` (>1) GPUs are asked for but not visible."""
    if devices < 1 or (devices > 1 and torch.cuda.device_count() < devices):
        raise DomainSSLError(
            f"--devices {devices} but {torch.cuda.device_count()} CUDA devices are visible: "
            "ask for at least 1 and at most that many."
        )
