"""timm backbones with ``in_chans`` = band count, and explicit first-conv adaptation."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from domainssl.errors import DomainSSLError


def create_backbone(name: str, in_chans: int, small_input: bool = False) -> nn.Module:
    """A timm model returning pooled features (B, D); never downloads weights.

    Args:
        name: timm model name, e.g. ``resnet18``.
        in_chans: number of input bands.
        small_input: replace the stem max-pool by identity (for chips of 32-64 px).
    """
    if name not in timm.list_models():
        raise DomainSSLError(
            f"Unknown backbone {name!r}: use a timm model name such as resnet18, resnet50, "
            "convnext_tiny or vit_small_patch16_224 (timm.list_models() lists them)."
        )
    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    if small_input and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model


def first_conv_key(model: nn.Module) -> str:
    """State-dict key of the weight of the first convolution (the one that sees the bands)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    raise DomainSSLError(f"{type(model).__name__} has no Conv2d to adapt to a band count.")


def mean_repeat(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt first-conv weights (O, C, k, k) to ``in_chans`` bands.

    Every new band gets the mean filter over the old bands, rescaled by C / in_chans so
    that the layer's response to an input of equal bands keeps its magnitude.
    """
    mean = weight.mean(dim=1, keepdim=True)  # (O, 1, k, k)
    return mean.repeat(1, in_chans, 1, 1) * (weight.shape[1] / in_chans)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a weights-only torch file (no pickle code runs)."""
    if not path.is_file():
        raise DomainSSLError(f"Checkpoint {path} not found: check model.init.")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DomainSSLError(
            f"{path} cannot be loaded as weights only ({type(err).__name__}). It may hold "
            "pickled code, which is refused: convert it to .safetensors with a trusted tool."
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise DomainSSLError(f"{path} holds no state dict of tensors.")
    return {k.removeprefix("backbone."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_backbone_weights(model: nn.Module, path: Path, adapt_in_chans: str = "error") -> None:
    """Load ``path`` into ``model``; a band-count mismatch needs ``adapt_in_chans``.

    Args:
        model: the backbone (its first conv has the target band count).
        path: checkpoint file.
        adapt_in_chans: ``error`` (default) or ``mean_repeat``.
    """
    state = read_weights(path)
    key = first_conv_key(model)
    target = model.state_dict()[key]
    if key in state and state[key].shape[1] != target.shape[1]:
        if adapt_in_chans != "mean_repeat":
            raise DomainSSLError(
                f"{path} was trained on {state[key].shape[1]} bands, the data has "
                f"{target.shape[1]}. Set model.adapt_in_chans=mean_repeat to adapt the first "
                "convolution explicitly (mean of its filters, repeated and rescaled)."
            )
        state[key] = mean_repeat(state[key], target.shape[1])
    # keys the backbone does not have (the checkpoint's own heads) are ignored on purpose
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise DomainSSLError(
            f"{path} does not fit this backbone: missing {missing[:5]}... "
            "Check that model.backbone names the architecture the checkpoint was trained with."
        )
