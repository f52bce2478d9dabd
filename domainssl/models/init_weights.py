"""Where a backbone's starting weights come from (``--init SPEC`` / ``model.init``).

A spec is one of:

- a domainssl run folder (``backbone.safetensors`` + ``backbone.json``) or transfer output
  folder (``model.safetensors`` + ``model.json``);
- a weight file: ``.safetensors``, or a weights-only ``.pth`` / ``.bin`` / ``.ckpt`` in timm's,
  torchvision's or a Hugging Face ViT/DINOv2 layout (:mod:`~domainssl.models.weight_layouts`);
- a timm pretrained name (``resnet50.a1_in1k``) or ``hf-hub:org/name``, read through timm
  from the local Hugging Face cache (nothing is downloaded: a missing entry is an error
  naming the command that fetches it);
- ``torchgeo:<WeightsEnum>.<MEMBER>``: the file torchgeo keeps in torch's hub cache, with
  the weights' bands and normalization.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file

from domainssl.errors import DomainSSLError
from domainssl.models.band_mapping import match_bands

RGB = ["red", "green", "blue"]
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
EIGHT_BIT = 255.0  # timm's mean/std are for pixels scaled to [0, 1]


@dataclass
class InitWeights:
    """Weights to start from, with what is known of them."""

    state: dict[str, torch.Tensor]
    source: str
    architecture: str | None = None
    """timm model name the weights are for (None: the configured ``model.backbone``)."""
    bands: list[str] | None = None
    """The weights' input bands, in order, when known."""
    mean: list[float] | None = None
    std: list[float] | None = None
    """The weights' own normalization, in raw pixel units, when known."""
    small_input: bool | None = None


def spec_kind(spec: str) -> str:
    """``torchgeo``, ``folder``, ``file`` or ``timm`` (a timm name or ``hf-hub:`` id)."""
    path = Path(spec).expanduser()
    if spec.startswith("torchgeo:"):
        return "torchgeo"
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "file"
    if path.suffix in WEIGHT_SUFFIXES:
        raise DomainSSLError(f"--init {spec}: the weight file does not exist.")
    if spec.startswith(("hf-hub:", "timm:")) or "/" not in spec:
        return "timm"
    raise DomainSSLError(
        f"--init {spec!r}: no such file or folder, and not a timm name (resnet50.a1_in1k), "
        "hf-hub:org/name or torchgeo:<Weights>.<MEMBER>."
    )


def resolve_init(spec: str) -> InitWeights:
    """The weights named by ``spec`` (see the module doc)."""
    kind = spec_kind(spec)
    if kind == "torchgeo":
        return from_torchgeo(spec.removeprefix("torchgeo:"))
    if kind == "folder":
        return from_folder(Path(spec).expanduser())
    if kind == "file":
        return InitWeights(read_weights(Path(spec).expanduser()), spec)
    return from_timm(spec.removeprefix("timm:"))


def init_architecture(spec: str) -> str | None:
    """The timm architecture ``spec`` names, read without loading its weights (None for a
    bare weight file, which fits the configured ``model.backbone`` or fails to). A timm
    spec must be in the local cache: checked here, before any training."""
    kind = spec_kind(spec)
    if kind == "torchgeo":
        return str(torchgeo_weights(spec.removeprefix("torchgeo:")).meta["model"])
    if kind == "folder":
        return from_folder(Path(spec).expanduser()).architecture
    if kind == "file":
        return None
    name = spec.removeprefix("timm:")
    repo = require_cached(name)
    if not name.startswith("hf-hub:"):
        return name.split(".")[0]
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json")
    if not isinstance(config, str):
        return None
    architecture = json.loads(Path(config).read_text()).get("architecture")
    return None if architecture is None else str(architecture)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a weights-only torch file (no pickled code runs)."""
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
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise DomainSSLError(f"{path} holds no state dict of tensors.")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def from_folder(folder: Path) -> InitWeights:
    """A pretrain run's exported backbone, or the backbone of a transfer output."""
    layouts = (("backbone.safetensors", "backbone.json", ""),
               ("model.safetensors", "model.json", "backbone."))  # fmt: skip
    for weights, metadata, prefix in layouts:
        if (folder / weights).is_file() and (folder / metadata).is_file():
            info = json.loads((folder / metadata).read_text())
            meta = info.get("backbone", info)
            state = {k.removeprefix(prefix): v for k, v in load_file(str(folder / weights)).items()
                     if k.startswith(prefix)}  # fmt: skip
            return InitWeights(state, str(folder), meta["timm_name"], meta["band_names"],
                               meta["mean"], meta["std"], meta["small_input"])  # fmt: skip
    raise DomainSSLError(
        f"--init {folder}: the folder holds neither an exported backbone (backbone.safetensors "
        "+ backbone.json) nor a transferred model (model.safetensors + model.json)."
    )


def hub_id(name: str) -> str:
    """The Hugging Face repository of a timm name or ``hf-hub:`` spec."""
    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:").split("@")[0]
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        raise DomainSSLError(
            f"--init {name!r} is not a timm pretrained name with weights on the Hugging Face "
            "hub (timm.list_pretrained() lists them, e.g. resnet50.a1_in1k)."
        )
    return str(cfg.hf_hub_id)


def require_cached(name: str) -> str:
    """The Hugging Face repository of ``name``, which must be in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    repo = hub_id(name)
    cached = [try_to_load_from_cache(repo, f) for f in ("model.safetensors", "pytorch_model.bin")]
    if not any(isinstance(found, str) for found in cached):
        home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise DomainSSLError(
            f"The weights of {name} are not in the local Hugging Face cache ({home}/hub); "
            f"nothing is downloaded during a run. Fetch them once where there is internet: "
            f"`hf download {repo}` (or `huggingface-cli download {repo}`), copy the cache "
            "to this machine, and run again (HF_HUB_OFFLINE=1 keeps timm offline)."
        )
    return repo


def from_timm(name: str) -> InitWeights:
    """timm's pretrained weights for ``name``, from the local Hugging Face cache only."""
    require_cached(name)
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as err:
        raise DomainSSLError(
            f"--init {name}: timm could not load its cached weights ({err})."
        ) from None
    cfg: dict[str, Any] = dict(model.pretrained_cfg)  # type: ignore[arg-type]
    channels = int(cfg.get("input_size", (3,))[0])
    mean, std = None, None
    if channels == 3 and cfg.get("mean") is not None and cfg.get("std") is not None:
        mean = [m * EIGHT_BIT for m in cfg["mean"]]
        std = [s * EIGHT_BIT for s in cfg["std"]]
    return InitWeights(
        {k: v.detach() for k, v in model.state_dict().items()},
        name,
        architecture=cfg.get("architecture") or name.split(".")[0],
        bands=RGB if channels == 3 else None,
        mean=mean,
        std=std,
    )


def from_torchgeo(name: str) -> InitWeights:
    """torchgeo's weights ``<Enum>.<MEMBER>`` from torch's hub cache, with their bands."""
    weights = torchgeo_weights(name)
    path = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.split("/")[-1]
    if not path.is_file():
        raise DomainSSLError(
            f"torchgeo:{name} is not in torch's cache: place {weights.url} at {path} "
            "(nothing is downloaded during a run)."
        )
    mean = std = None
    for module in weights.transforms.modules():
        if hasattr(module, "mean") and hasattr(module, "std"):
            bands = len(weights.meta["bands"])
            mean, std = _per_band(module.mean, bands), _per_band(module.std, bands)
    return InitWeights(read_weights(path), f"torchgeo:{name}", weights.meta["model"],
                       list(weights.meta["bands"]), mean, std)  # fmt: skip


def torchgeo_weights(name: str) -> Any:
    """torchgeo's weights enum member ``<Enum>.<MEMBER>``."""
    import torchgeo.models

    enum_name, _, member = name.partition(".")
    try:
        return getattr(getattr(torchgeo.models, enum_name), member)
    except AttributeError:
        raise DomainSSLError(
            f"--init torchgeo:{name}: torchgeo has no weights of that name "
            "(e.g. torchgeo:ResNet50_Weights.SENTINEL2_ALL_MOCO)."
        ) from None


def _per_band(values: object, bands: int) -> list[float]:
    flat = [float(v) for v in torch.as_tensor(values).flatten()]
    return flat * bands if len(flat) == 1 else flat


def init_normalization(
    init: InitWeights, band_names: list[str], mean: list[float], std: list[float], which: str
) -> tuple[list[float], list[float]]:
    """The data's per-band ``mean``/``std``, or (``which`` = ``weights``) the init's own for
    the data bands matched to the weights' bands by name."""
    if which == "data":
        return mean, std
    if init.mean is None or init.std is None or init.bands is None:
        raise DomainSSLError(
            f"model.init_normalization=weights, but the normalization of {init.source} is not "
            "known: use model.init_normalization=data."
        )
    mapping = match_bands(band_names, init.bands)
    pairs = [
        (init.mean[init.bands.index(source)], init.std[init.bands.index(source)])
        if source is not None
        else (m, s)
        for (source, m, s) in zip(mapping.values(), mean, std, strict=True)
    ]
    return [m for m, _ in pairs], [s for _, s in pairs]
