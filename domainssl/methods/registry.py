"""The method registry: a method registers its name, its ``method`` config section (which
names its default view preset), its LightningModule, the data module it trains on and,
for a multi-stage method, the driver of its stages.

Adding a method is adding its module (or package) to :mod:`domainssl.methods`, which
imports them all; the CLI's ``--method`` choices and config validation read this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from domainssl.config import METHOD_CONFIGS, MethodConfig, RunConfig
from domainssl.data.datamodule import PretrainDataModule
from domainssl.errors import DomainSSLError
from domainssl.methods.base import SSLMethod


class FitStage(Protocol):
    """Trains one stage (a plain single-stage run) into ``run_dir`` and exports it."""

    def __call__(self, config: RunConfig, run_dir: Path, resume: bool) -> None: ...


StageDriver = Callable[[RunConfig, Path, bool, FitStage], None]
"""Runs (or resumes) a multi-stage method in ``run_dir``; each training stage goes through
the given :class:`FitStage`, and the last one writes the run's export."""


@dataclass(frozen=True)
class MethodSpec:
    """Everything pretraining needs to know about a method."""

    name: str
    summary: str
    """One line for the CLI help."""
    config: type[MethodConfig]
    module: type[SSLMethod]
    data: type[PretrainDataModule]
    stages: StageDriver | None
    """None: a single training run; else the driver of the method's stages."""


METHODS: dict[str, MethodSpec] = {}
ModuleT = TypeVar("ModuleT", bound=type[SSLMethod])


def register_method(
    config: type[MethodConfig],
    summary: str,
    data: type[PretrainDataModule] = PretrainDataModule,
    stages: StageDriver | None = None,
) -> Callable[[ModuleT], ModuleT]:
    """Class decorator on a method's LightningModule: register it under ``config``'s name."""

    def register(module: ModuleT) -> ModuleT:
        METHOD_CONFIGS.register(config)
        name = config.model_fields["name"].default
        METHODS[name] = MethodSpec(name, summary, config, module, data, stages)
        return module

    return register


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name`` (a clear error listing the methods otherwise)."""
    if name not in METHODS:
        raise DomainSSLError(f"Unknown method {name!r}: choose one of {', '.join(METHODS)}.")
    return METHODS[name]
