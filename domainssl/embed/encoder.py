"""The encoder an archive run embeds with, as an exported backbone folder (``backbone.safetensors``
+ ``backbone.json``) that slides, scenes and chips all read: a pretrain run as it is, or the
backbone of a transfer output or of an ``--init``-style spec written once into the output
folder."""

from __future__ import annotations

import json
from pathlib import Path

from domainssl.embed.manifest import WORK
from domainssl.errors import DomainSSLError
from domainssl.export import METADATA, WEIGHTS, BackboneMeta, export_backbone
from domainssl.models.backbones import apply_init, create_backbone, is_vit
from domainssl.models.init_weights import RGB, InitWeights, from_folder, resolve_init
from domainssl.transfer.outputs import MODEL_METADATA

DEFAULT_INIT_SIZE = 224


def _export(init: InitWeights, meta: BackboneMeta, out_dir: Path) -> Path:
    folder = out_dir / WORK / "encoder"
    if not ((folder / WEIGHTS).is_file() and (folder / METADATA).is_file()):
        backbone = create_backbone(meta.timm_name, meta.in_chans, meta.small_input,
                                   meta.timm_kwargs)  # fmt: skip
        apply_init(backbone, init, meta.band_names)
        folder.mkdir(parents=True, exist_ok=True)
        export_backbone(backbone, meta, folder)
    return folder


def _init_meta(spec: str, init: InitWeights, size: int) -> BackboneMeta:
    if init.architecture is None:
        raise DomainSSLError(
            f"{spec} is a bare weight file: its architecture is unknown. Embed with a "
            "pretrain run or transfer output, or name the weights by their timm name."
        )
    if init.mean is None or init.std is None:
        raise DomainSSLError(
            f"The normalization of {spec} is not known: embed with a pretrain run that "
            "started from it (--init) instead."
        )
    bands = init.bands or RGB
    kwargs = {"img_size": size, "dynamic_img_size": True} if is_vit(init.architecture) else {}
    probe = create_backbone(init.architecture, len(bands), bool(init.small_input), kwargs)
    return BackboneMeta(
        timm_name=init.architecture, small_input=bool(init.small_input), in_chans=len(bands),
        band_names=list(bands), mean=list(init.mean), std=list(init.std),
        feature_dim=int(getattr(probe, "num_features", 0)), input_size=size, method="none",
        domain="init", data_source=spec, config={}, timm_kwargs=kwargs,
        init={"source": spec, "adapted": None, "normalization": "weights"},
    )  # fmt: skip


def encoder_folder(model: str, out_dir: Path, size: int | None) -> Path:
    """An exported backbone folder for ``model``: a pretrain run, a transfer output (its
    backbone, the penultimate features) or a pretrained-weights spec as ``--init`` takes
    (fed ``size`` px tiles, default 224; mpp unknown, so slides need ``--mpp``)."""
    path = Path(model).expanduser()
    if (path / WEIGHTS).is_file() and (path / METADATA).is_file():
        return path
    if (path / MODEL_METADATA).is_file():
        info = json.loads((path / MODEL_METADATA).read_text())
        return _export(from_folder(path), BackboneMeta(**info["backbone"]), out_dir)
    if path.is_dir():
        raise DomainSSLError(
            f"{path} holds neither an exported backbone ({WEIGHTS} + {METADATA}) nor a "
            f"transferred model ({MODEL_METADATA}): give a pretrain run or transfer output."
        )
    init = resolve_init(model)
    return _export(init, _init_meta(model, init, size or DEFAULT_INIT_SIZE), out_dir)
