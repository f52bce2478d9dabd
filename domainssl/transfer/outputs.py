"""A transfer output folder's model: ``model.safetensors`` + ``model.json``, written and read
the same way by every task (``infer`` reads them too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta
from domainssl.io import atomic_write, atomic_write_text

MODEL_WEIGHTS, MODEL_METADATA = "model.safetensors", "model.json"


def save_transfer_model(model: nn.Module, info: dict[str, Any], out_dir: Path) -> None:
    """Write the model's weights and its ``model.json`` (task, classes, backbone metadata)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out_dir / MODEL_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    atomic_write_text(out_dir / MODEL_METADATA, json.dumps(info, indent=2))


def read_transfer_output(
    model_dir: Path, command: str
) -> tuple[dict[str, Any], BackboneMeta, dict[str, torch.Tensor]]:
    """model.json, the backbone metadata and the weights of a transfer output folder
    (``command`` names what writes such a folder, for the error message)."""
    weights, metadata = model_dir / MODEL_WEIGHTS, model_dir / MODEL_METADATA
    if not (weights.is_file() and metadata.is_file()):
        raise DomainSSLError(
            f"{model_dir} holds no transferred model ({MODEL_WEIGHTS} + {MODEL_METADATA}): "
            f"give the output folder of `{command}`."
        )
    info = json.loads(metadata.read_text())
    return info, BackboneMeta(**info["backbone"]), load_file(str(weights))
