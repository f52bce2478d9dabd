"""Export a trained backbone (safetensors) with the metadata transfer and infer need."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.io import atomic_write, atomic_write_text
from domainssl.models.backbones import create_backbone
from domainssl.views.presets import Standardize
from domainssl.views.stain import PixelStainNormalization

WEIGHTS, METADATA = "backbone.safetensors", "backbone.json"


@dataclass
class BackboneMeta:
    """What a backbone expects: architecture, bands and their normalization."""

    timm_name: str
    small_input: bool
    in_chans: int
    band_names: list[str]
    mean: list[float]
    std: list[float]
    feature_dim: int
    input_size: int
    """Side (px) of the samples the views were cut from: the size to feed downstream."""
    method: str
    domain: str
    data_source: str
    config: dict[str, Any]
    mpp: float | None = None
    """Pathology: microns per pixel of the pretraining samples (None when unknown)."""
    stain_norm: dict[str, Any] | None = None
    """Pathology: the fitted stain normalization applied before ``mean``/``std``."""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    """More ``timm.create_model`` arguments the backbone was built with (``{}`` for CNNs)."""
    init: dict[str, Any] | None = None
    """The weights pretraining started from, how their bands were adapted, and whose
    normalization ``mean``/``std`` are (``data`` or the init's ``weights``)."""


def backbone_for(meta: BackboneMeta) -> nn.Module:
    """A randomly initialised backbone of the architecture ``meta`` describes."""
    return create_backbone(meta.timm_name, meta.in_chans, meta.small_input, meta.timm_kwargs)


def export_backbone(backbone: nn.Module, meta: BackboneMeta, run_dir: Path) -> None:
    """Write ``backbone.safetensors`` and ``backbone.json`` into ``run_dir`` atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(run_dir / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    atomic_write_text(run_dir / METADATA, json.dumps(meta.__dict__, indent=2))


def read_meta(run_dir: Path) -> BackboneMeta:
    """The metadata of an exported backbone (a clear error when ``run_dir`` has none)."""
    weights, metadata = run_dir / WEIGHTS, run_dir / METADATA
    if not (weights.is_file() and metadata.is_file()):
        raise DomainSSLError(
            f"{run_dir} holds no exported backbone ({WEIGHTS} + {METADATA}): give the folder "
            "of a finished `domainssl pretrain` run."
        )
    return BackboneMeta(**json.loads(metadata.read_text()))


def load_backbone(run_dir: Path) -> tuple[nn.Module, BackboneMeta]:
    """The exported backbone (eval mode) and its metadata."""
    meta = read_meta(run_dir)
    weights = run_dir / WEIGHTS
    backbone = backbone_for(meta)
    backbone.load_state_dict(load_file(str(weights)))
    return backbone.eval(), meta


def preprocess(meta: BackboneMeta, images: torch.Tensor) -> torch.Tensor:
    """Raw pixels (B, C, H, W) as pretraining fed them to the backbone: the recorded stain
    normalization (if any), then per-band standardization."""
    images = images.float()
    if meta.stain_norm is not None:
        images = PixelStainNormalization(meta.stain_norm)(images)
    return Standardize(meta.mean, meta.std).to(images.device)(images)


def check_resolution(meta: BackboneMeta, input_mpp: float | None, what: str) -> None:
    """Warn when ``what`` is at another resolution (µm/px) than the backbone was pretrained."""
    if meta.mpp is None or input_mpp is None:
        return
    if abs(input_mpp - meta.mpp) > 0.05 * meta.mpp:
        warnings.warn(
            f"{what} is at {input_mpp:.3g} µm/px but the backbone was pretrained at "
            f"{meta.mpp:.3g} µm/px: features may not transfer. Read it at {meta.mpp:.3g} µm/px "
            f"(--mpp {meta.mpp:.3g}) to match.",
            stacklevel=2,
        )
