"""What the commands share: user errors as one message and exit code 2, device choice, and
the options of pretrain and views."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand

from domainssl.console import Verbosity, set_verbosity
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


PRECISION_HELP = (
    "32-true; 16-mixed (float16, GPU only); bf16-mixed (GPU, or a CPU with bfloat16 "
    "instructions: about 2x faster there, features within about 1% of 32-true)."
)


def check_tiling(
    *,
    tile: int | None,
    batch_size: int | None,
    num_workers: int | None,
    mpp: float | None,
    slide_mpp: float | None,
    tissue_threshold: float,
) -> None:
    """One clear error for a tiling option of ``infer`` / ``embed`` nothing can run with."""
    if tile is not None and tile < 1:
        raise DomainSSLError(f"--tile must be a positive number of pixels, not {tile}.")
    if batch_size is not None and batch_size < 1:
        raise DomainSSLError(f"--batch-size must be at least 1, not {batch_size}.")
    if num_workers is not None and num_workers < 0:
        raise DomainSSLError(f"--num-workers must be 0 or more, not {num_workers}.")
    for name, value in (("--mpp", mpp), ("--slide-mpp", slide_mpp)):
        if value is not None and not value > 0:
            raise DomainSSLError(f"{name} must be a positive µm/px (e.g. 0.5), not {value}.")
    if not 0 <= tissue_threshold <= 1:
        raise DomainSSLError(
            f"--tissue-threshold is a share of the patch, from 0 to 1, not {tissue_threshold}."
        )


def inference_precision(precision: str, device: str) -> str:
    """``precision`` of ``infer`` / ``embed``, checked; a note when ``device`` ignores it."""
    from domainssl.infer.runner import check_precision

    check_precision(precision)
    if precision == "16-mixed" and device == "cpu":
        typer.echo("Note: 16-mixed applies on a GPU; the CPU runs float32 (or use bf16-mixed).")
    return precision


def parse_devices(devices: str | None) -> int | str | None:
    """``"2"`` -> 2; ``"auto"`` and ``"0,1"`` stay strings."""
    return int(devices) if devices is not None and devices.isdigit() else devices


class MethodsListedCommand(TyperCommand):
    """A command whose help lists the registered methods (``--method``'s choices) with
    their summaries. The registry is imported only when such a command's options are read,
    so the other commands start fast."""

    def get_params(self, ctx: Any) -> list[Any]:
        from domainssl.methods.registry import METHODS

        self.epilog = "Methods: " + "; ".join(f"{n}: {s.summary}" for n, s in METHODS.items())
        return super().get_params(ctx)


Domain = Annotated[str, typer.Option(help="Domain: eo, pathology or reid.")]
Method = Annotated[
    str | None, typer.Option(help="SSL method (default simclr); the methods are listed below.")
]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML run config to use.")]
Data = Annotated[
    str | None,
    typer.Option(
        help="Folder of chips or images, GeoTIFF scene(s), slides, or torchgeo:<Class>:<root>."
    ),
]
Sets = Annotated[
    list[str] | None, typer.Option("--set", help="Override any key: section.key=value.")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only warnings, errors and the final summary.")
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Also every library message (Lightning's).")
]


def apply_verbosity(quiet: bool, verbose: bool) -> Verbosity:
    """Set this process's console verbosity from ``--quiet`` / ``--verbose``."""
    if quiet and verbose:
        raise DomainSSLError("Give --quiet or --verbose, not both.")
    level = Verbosity.QUIET if quiet else Verbosity.VERBOSE if verbose else Verbosity.NORMAL
    set_verbosity(level)
    return level
