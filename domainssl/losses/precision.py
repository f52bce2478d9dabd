"""Losses compute in float32: under mixed precision, similarities, logits and softmaxes in
bfloat16 or float16 lose the small differences contrastive losses are made of."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

ForwardT = TypeVar("ForwardT", bound=Callable[..., torch.Tensor])


def in_float32(forward: ForwardT) -> ForwardT:
    """Run a loss's ``forward`` with autocast off and floating-point tensors in float32."""

    @functools.wraps(forward)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"

        def full(value: Any) -> Any:
            is_float = isinstance(value, torch.Tensor) and value.is_floating_point()
            return value.float() if is_float else value

        with torch.autocast(device_type=device, enabled=False):
            args = tuple(full(a) for a in args)
            return forward(self, *args, **{k: full(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
