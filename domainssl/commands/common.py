"""What every command shares: user errors as one message and exit code 2, device choice."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from domainssl.errors import DomainSSLError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Print a user's mistake as one clear message and exit with code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DomainSSLError as err:
            typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def pick_device(accelerator: str) -> str:
    """``cpu``, ``gpu`` (an error when there is none) or ``auto`` -> a torch device name."""
    import torch

    if accelerator not in ("cpu", "gpu", "auto"):
        raise DomainSSLError(f"--accelerator must be cpu, gpu or auto, not {accelerator!r}.")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise DomainSSLError("--accelerator gpu but no CUDA GPU is visible: use cpu or auto.")
    return "cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu"
