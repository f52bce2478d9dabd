"""timm backbones with ``in_chans`` = band count, started from pretrained weights with an
explicit adaptation of the first convolution to the data's bands."""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import nn

from domainssl.errors import DomainSSLError
from domainssl.models.band_mapping import by_name, mean_repeat
from domainssl.models.init_weights import InitWeights
from domainssl.models.weight_layouts import to_timm_layout


def create_backbone(
    name: str, in_chans: int, small_input: bool = False, timm_kwargs: dict | None = None
) -> nn.Module:
    """A timm model returning pooled features (B, D); never downloads weights.

    Args:
        name: timm model name, e.g. ``resnet18``.
        in_chans: number of input bands.
        small_input: replace the stem max-pool by identity (for chips of 32-64 px).
        timm_kwargs: more arguments for ``timm.create_model`` (ViTs: ``img_size``,
            ``patch_size``, ``dynamic_img_size``).
    """
    if name not in timm.list_models():
        raise DomainSSLError(
            f"Unknown backbone {name!r}: use a timm model name such as resnet18, resnet50, "
            "convnext_tiny or vit_small_patch16_224 (timm.list_models() lists them)."
        )
    kwargs = timm_kwargs or {}
    try:
        model = timm.create_model(
            name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs
        )
    except TypeError as err:
        raise DomainSSLError(f"model.timm_kwargs {kwargs} do not fit {name}: {err}") from None
    if small_input and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model


VIT_MODULES = ("vision_transformer", "deit", "eva")
"""timm modules whose models are plain ViTs (patch embedding + position embedding + blocks)."""


def is_vit(name: str) -> bool:
    """Whether timm's ``name`` is a plain vision transformer."""
    try:
        module = timm.models.model_entrypoint(name).__module__
    except (RuntimeError, KeyError):  # not a timm model: create_backbone says so
        return False
    return module.rsplit(".", 1)[-1] in VIT_MODULES


def vit_kwargs(name: str, crop: int, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` with what a ViT needs at chips of ``crop`` px, where not given: ``img_size``
    = the crop, a patch size that leaves a grid of 4-8 patches a side (4 px up to 32 px
    crops, 8 px up to 96, else 16), and ``dynamic_img_size`` so that transfer and inference
    may feed other sizes (position embeddings interpolated). Other backbones: ``given``."""
    if not is_vit(name):
        return given
    patch = 4 if crop <= 32 else 8 if crop <= 96 else 16
    return {"img_size": crop, "patch_size": patch, "dynamic_img_size": True, **given}


def first_conv_key(model: nn.Module) -> str:
    """State-dict key of the weight of the first convolution (the one that sees the bands)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    raise DomainSSLError(f"{type(model).__name__} has no Conv2d to adapt to a band count.")


def apply_init(
    model: nn.Module, init: InitWeights, band_names: list[str], adapt_in_chans: str = "error"
) -> dict[str, Any]:
    """Load ``init`` into ``model`` (whose first conv sees ``band_names``); returns what the
    export records: the source and, when the bands were adapted, how.

    Args:
        model: the backbone.
        init: the weights (:func:`~domainssl.models.init_weights.resolve_init`).
        band_names: the data's bands, in order.
        adapt_in_chans: ``error``, ``mean_repeat`` or ``by_name`` when the weights were
            trained on other bands than the data's.
    """
    target = model.state_dict()
    state = to_timm_layout(init.state, set(target), init.source)
    record: dict[str, Any] = {"source": init.source, "adapted": None}
    key = first_conv_key(model)
    weights_bands = init.bands or [f"weights band {i + 1}" for i in range(state[key].shape[1])]
    differ = state[key].shape[1] != len(band_names) or (
        init.bands is not None
        and [b.lower() for b in init.bands] != [b.lower() for b in band_names]
    )
    if differ and adapt_in_chans == "by_name":
        state[key], mapping = by_name(state[key], band_names, weights_bands)
        record["adapted"] = {"how": "by_name", "bands": mapping}
    elif state[key].shape[1] != len(band_names):
        if adapt_in_chans == "error":
            raise DomainSSLError(
                f"{init.source} was trained on {state[key].shape[1]} bands "
                f"({', '.join(weights_bands)}), the data has {len(band_names)} "
                f"({', '.join(band_names)}). Set model.adapt_in_chans=by_name (bands matched "
                "by name) or mean_repeat (the mean filter for every band) to adapt explicitly."
            )
        state[key] = mean_repeat(state[key], len(band_names))
        record["adapted"] = {"how": "mean_repeat", "weights_bands": weights_bands}
    resize_vit_inputs(state, target)
    model.load_state_dict(state)
    return record


def resize_vit_inputs(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> None:
    """A ViT's position embeddings and patch projection resampled to ``target``'s grid and
    patch size (timm's interpolation), so that weights fit any chip size."""
    if "pos_embed" in state and state["pos_embed"].shape != target["pos_embed"].shape:
        old, new = state["pos_embed"].shape[1], target["pos_embed"].shape[1]
        prefix = old - round((old - 1) ** 0.5) ** 2  # class (and register) tokens
        side = round((new - prefix) ** 0.5)
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], [side, side], num_prefix_tokens=prefix
        )
    weight = "patch_embed.proj.weight"
    if weight in state and state[weight].shape[-2:] != target[weight].shape[-2:]:
        state[weight] = resample_patch_embed(state[weight], list(target[weight].shape[-2:]))
