"""Typed run configuration: YAML file + CLI overrides, unknown keys rejected.

A run config has six sections (data, views, model, method, optimizer, trainer) and a few
top-level keys. Files live in ``configs/<domain>/<method>.yaml``; ``--set section.key=value``
overrides any key, its value parsed as YAML (``--set views.crop_scale=[0.3,1.0]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from domainssl.errors import DomainSSLError
from domainssl.paths import CONFIGS_DIR


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the images come from and how they are batched."""

    path: str | None = None
    """Folder of chips, a GeoTIFF scene, or a folder of scenes; None = embedded demo."""
    kind: Literal["auto", "chips", "scenes", "slides"] = "auto"
    """``chips``: one sample per file; ``scenes``: random windows from large rasters;
    ``slides``: tissue patches of whole-slide images."""
    bands: list[str] | None = None
    """Band names; by default read from the file (descriptions) or ``B1..Bn``."""
    in_chans: int | None = None
    """Expected band count; a file with another count is an error. None = take the data's."""
    sample_size: int = 64
    """Side (px) of the sample given to the views: chips are resized to it, windows read at it."""
    samples_per_epoch: int = 2048
    """Scenes and slides: random windows / patches drawn per epoch."""
    max_nodata_fraction: float = 0.5
    """Scenes only: windows with more nodata than this are rejected and redrawn."""
    mpp: float = 0.5
    """Slides: target resolution in microns per pixel (0.5 ~ 20x, 0.25 ~ 40x)."""
    slide_mpp: float | None = None
    """Slides: resolution of level 0 when the slide does not record it."""
    tissue_threshold: float = 0.5
    """Slides: minimum tissue share of a patch."""
    stain_norm: Literal["none", "macenko", "reinhard"] = "none"
    """Pathology: stain normalization applied to every sample before the views (and by
    transfer / infer, which read it from the export)."""
    stain_reference: str | None = None
    """Pathology: RGB image whose stain is the target; None = fit on the data set itself."""
    stain_fit_samples: int = 64
    """Pathology: patches fitted together when the target is the data set."""
    stats_samples: int = 2048
    """Samples used for the streaming per-band mean/std."""
    cache_in_memory_gb: float = 4.0
    """Chips are decoded once into RAM when they fit in this many GB (else read per step)."""
    person_size: tuple[int, int] = (288, 144)
    """Re-ID: (height, width) every person image is resized to (288x144 is the usual SYSU-MM01
    size)."""
    batch_size: int = 256
    num_workers: int = 2
    strict: bool = False
    """Chips: an unreadable file is an error; False = skip it and list the skipped files."""


class ViewsConfig(_Section):
    """Batch-level augmentation (the views the model learns to be invariant to)."""

    preset: Literal["eo", "pathology", "reid"] = "eo"
    crop_size: int = 32
    """Output side (px) of each view."""
    crop_scale: tuple[float, float] = (0.25, 1.0)
    """Area fraction range of the random resized crop."""
    crop_ratio: tuple[float, float] = (0.75, 1.333)
    flip_p: float = 0.5
    rot90: bool = True
    jitter_p: float = 0.8
    brightness: float = 0.4
    """Per-band additive shift, in units of that band's std."""
    contrast: float = 0.4
    """Per-band multiplicative factor range 1 ± contrast."""
    band_dropout_p: float = 0.0
    """Probability that each band is zeroed (at least one band is kept)."""
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise_std: float = 0.05
    hed_sigma: float = 0.05
    """Pathology: multiplicative HED stain jitter (Tellez et al. 2018 "HED-light": 0.05)."""
    hed_bias: float = 0.05
    """Pathology: additive HED stain jitter."""
    crops: Literal["random", "object_aware", "scene_object"] = "random"
    """``object_aware`` (Mishra et al. 2022): one view inside an object proposal, the other in
    the same box dilated; ``scene_object``: one object view, one whole-scene view."""
    object_scale: tuple[float, float] = (0.5, 1.0)
    """Object-aware: area range (s, 1) of the random resized crop inside the proposal box."""
    box_dilation: tuple[float, float] = (1.1, 1.2)
    """Object-aware: side factor by which the box of the other view is dilated."""
    min_box_fraction: float = 0.3
    """Object-aware: boxes with a side below this share of the image are padded to it."""
    proposal_method: Literal["auto", "selective_search", "grouping", "nuclei"] = "auto"
    """Object proposals: OpenCV selective search (3 bands), superpixel grouping (any bands),
    nucleus-rich components (H&E); ``auto`` = selective search for 3 bands, else grouping."""
    proposal_scale: float = 30.0
    """Object proposals: Felzenszwalb scale of the base segmentation (larger = coarser)."""
    proposal_min_side: int = 8
    """Object proposals: smallest box side kept (px of the sample)."""
    proposal_max_aspect: float = 3.0
    proposal_top_k: int = 8
    """Object proposals kept per image after NMS at IoU 0.5."""
    channel_p: float = 0.3
    """Re-ID: chance an RGB view becomes one random channel repeated to 3 (Ye et al. 2021)."""
    gray_p: float = 0.2
    """Re-ID: chance an RGB view becomes 3-channel gray (bridges RGB and infrared)."""
    erase_p: float = 0.5
    """Re-ID: chance of random erasing of a rectangle (Zhong et al. 2020)."""


class ModelConfig(_Section):
    """Backbone from timm by name; ``in_chans`` always equals the band count."""

    backbone: str = "resnet18"
    init: str | None = None
    """Checkpoint (.safetensors or weights-only .pth/.ckpt) to start from."""
    adapt_in_chans: Literal["error", "mean_repeat"] = "error"
    """What to do when ``init`` has another band count than the data."""
    small_input: bool = True
    """Drop the stem's max-pool (keeps resolution for small chips, as CIFAR-style ResNets do)."""


class MethodConfig(_Section):
    """SSL method and its heads; keys a method does not use are ignored by it."""

    name: Literal["simclr", "moco", "byol", "simsiam", "mmgl", "orl"] = "simclr"
    proj_hidden_dim: int = 1024
    proj_dim: int = 128
    pred_hidden_dim: int = 512
    """BYOL / SimSiam predictor width."""
    temperature: float = 0.2
    """SimCLR / MoCo softmax temperature."""
    queue_size: int = 4096
    """MoCo: negatives kept from earlier batches."""
    momentum: float = 0.99
    """MoCo / BYOL: EMA momentum of the target (BYOL raises it to 1 on a cosine schedule)."""
    stripes: int = 4
    """MMGL: horizontal stripes (parts) each person image is cut into."""
    permutations: int = 24
    """MMGL: size of the fixed stripe-permutation set (at most stripes!)."""
    cycle_weight: float = 1.0
    """MMGL: weight of the part-aware cycle-contrastive loss."""
    cycle_temperature: float = 0.1
    """MMGL: softmax temperature of the part-aware cycle-contrastive loss."""
    two_stream: bool = False
    """MMGL: separate RGB / infrared stems with shared deep layers (else one stream)."""
    orl_init: str | None = None
    """ORL: an existing pretrain run folder used as stage 1 (then stage 1 is skipped)."""
    orl_stage_shares: tuple[float, float, float] = (0.4, 0.2, 0.4)
    """ORL: shares of ``trainer.max_time`` for stages 1, 2 and 3 (unused time moves on)."""
    orl_neighbors: int = 10
    """ORL stage 2: nearest images (cosine) retrieved per image (Xie et al. 2021: 10)."""
    orl_top_fraction: float = 0.1
    """ORL stage 2: share of RoI-RoI pairs kept per image-neighbour pair (Xie et al.: 10%)."""
    orl_mine_images: int | None = None
    """ORL stage 2: mine pairs among this many randomly chosen images (None = all)."""
    orl_jitter_iou: float = 0.5
    """ORL stage 3: the intra-image RoI pair are two jitters of a box with IoU above this."""
    orl_loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """ORL stage 3: weights of the global, intra-image RoI and inter-image RoI losses."""


class OptimizerConfig(_Section):
    name: Literal["sgd", "lars", "adamw"] = "lars"
    lr: float = 1.2
    """Peak learning rate (reached after warmup)."""
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_fraction: float = 0.05
    """Share of the run (steps or time budget) spent in linear warmup."""


class TrainerConfig(_Section):
    epochs: int = 30
    limit_train_batches: int | float = 1.0
    """Batches per epoch: a share (float) or a count (int); for quick checks."""
    max_time: str | None = None
    """Wall-clock budget ``HH:MM:SS`` (or ``DD:HH:MM:SS``): the LR schedule spans it."""
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    precision: str = "32-true"
    strategy: str = "auto"
    sync_batchnorm: bool = False
    seed: int = 0
    checkpoint_every_n_epochs: int = 1
    """Write ``checkpoints/last.ckpt`` after every this many epochs."""
    checkpoint_every_minutes: float | None = None
    """Instead, write it every this many minutes of training (for long epochs)."""
    checkpoint_every_n_steps: int | None = None
    """Also write it every this many optimizer steps (a mid-epoch resume is not replayed
    batch for batch; epoch-end checkpoints are)."""
    log_every_n_steps: int = 10
    collapse_threshold: float = 0.1
    """Warn when the embedding std falls below this share of its healthy value 1/sqrt(dim)."""

    @field_validator("max_time")
    @classmethod
    def _check_time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def max_time_s(self) -> float | None:
        return None if self.max_time is None else parse_duration(self.max_time)


class RunConfig(_Section):
    """A whole pretraining run."""

    domain: Literal["eo", "pathology", "reid"] = "eo"
    out: str = "runs"
    """Parent folder of run folders."""
    name: str | None = None
    """Run folder name; default ``<domain>-<method>-<timestamp>``."""
    data: DataConfig = DataConfig()
    views: ViewsConfig = ViewsConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    trainer: TrainerConfig = TrainerConfig()


def parse_duration(text: str) -> float:
    """Seconds in ``HH:MM:SS`` or ``DD:HH:MM:SS``."""
    parts = text.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (3, 4) or any(n < 0 for n in numbers):
        raise ValueError(f"max_time {text!r} is not HH:MM:SS (e.g. 00:20:00)")
    weights = [86400, 3600, 60, 1][-len(numbers) :]
    return sum(w * n for w, n in zip(weights, numbers, strict=True))


def read_yaml(path: Path) -> dict[str, Any]:
    """Safe-load a YAML mapping; object tags and syntax errors become clear errors."""
    if not path.is_file():
        raise DomainSSLError(f"Config file {path} not found: give an existing YAML file.")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DomainSSLError(
            f"Config file {path} is not valid YAML (only plain YAML, no object tags): {err}"
        ) from err
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise DomainSSLError(f"Config file {path} must hold a mapping of sections, not a list.")
    return content


def config_path(domain: str, method: str) -> Path:
    """The shipped config for a domain and method, with the choices when it does not exist."""
    path = CONFIGS_DIR / domain / f"{method}.yaml"
    if not path.is_file():
        known = sorted(f"{p.parent.name}/{p.stem}" for p in CONFIGS_DIR.glob("*/*.yaml"))
        raise DomainSSLError(
            f"No config for domain {domain!r} and method {method!r} ({path}). "
            f"Shipped configs: {', '.join(known) or 'none'}; or pass --config FILE."
        )
    return path


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b] = value`` for ``dotted = "a.b"``, creating sections as needed."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise DomainSSLError(f"Cannot set {dotted}: {key} is a value, not a section.")
        node = child
    node[leaf] = value


def parse_set(item: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise DomainSSLError(f"--set {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:
        raise DomainSSLError(f"--set {item!r}: the value is not valid YAML ({err})") from err
    return key.strip(), value


def build_config(tree: dict[str, Any], source: str) -> RunConfig:
    """Validate a config tree; every problem is reported with its key and the valid keys."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise DomainSSLError(_explain(err, source)) from None


def load_config(
    domain: str = "eo",
    method: str | None = None,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Build the run config: file, then CLI overrides (dotted keys), then ``--set`` items."""
    path = config_file or config_path(domain, method or "simclr")
    tree = read_yaml(path)
    tree.setdefault("domain", domain)
    if method is not None:
        set_dotted(tree, "method.name", method)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(tree, key, value)
    for item in sets or []:
        set_dotted(tree, *parse_set(item))
    return build_config(tree, str(path))


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"Invalid config ({source}):"]
    for problem in err.errors():
        loc = [str(part) for part in problem["loc"]]
        where = ".".join(loc)
        if problem["type"] == "extra_forbidden":
            valid = ", ".join(_valid_keys(loc[:-1]))
            lines.append(f"  unknown key '{where}'. Valid keys here: {valid}")
        else:
            lines.append(f"  {where}: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)


def _valid_keys(section_path: list[str]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for key in section_path:
        annotation = model.model_fields[key].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (what the run folder stores)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
