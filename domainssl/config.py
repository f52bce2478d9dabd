"""Typed run configuration: YAML file + CLI overrides, unknown keys rejected.

A run config has six sections (data, views, model, method, optimizer, trainer) and a few
top-level keys. Files live in ``configs/<domain>/<method>.yaml``; ``--set section.key=value``
overrides any key, its value parsed as YAML (``--set views.crop_scale=[0.3,1.0]``).

The ``method`` and ``views`` sections hold the keys of the chosen method (``method.name``)
and view preset (``views.preset``) only: each method and preset registers its own model
(:data:`METHOD_CONFIGS`, :data:`VIEW_CONFIGS`) when its module is imported; importing
:mod:`domainssl.methods` registers them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from domainssl.errors import DomainSSLError
from domainssl.paths import CONFIGS_DIR


class Section(BaseModel):
    """A config section: typed keys, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodConfig(Section):
    """Base of every method's section; each method adds its own keys."""

    name: str
    default_preset: ClassVar[str | None] = None
    """The view preset the method needs whatever the domain (None: the domain's own)."""


class ViewsConfig(Section):
    """Base of every view preset's section; each preset adds its own keys."""

    preset: str


SectionT = TypeVar("SectionT", bound=Section)


class SectionChoices(Generic[SectionT]):
    """The registered models of one section, told apart by one key (``method.name``)."""

    def __init__(self, section: str, key: str, what: str) -> None:
        self.section, self.key, self.what = section, key, what
        self.models: dict[str, type[SectionT]] = {}

    def register(self, model: type[SectionT]) -> type[SectionT]:
        """Add ``model`` under the default of its ``key`` field (a class decorator)."""
        name = model.model_fields[self.key].default
        if not isinstance(name, str):
            raise TypeError(f"{model.__name__}.{self.key} needs a string default (its name).")
        self.models[name] = model
        return model

    def model(self, name: str) -> type[SectionT]:
        if not self.models:
            raise RuntimeError(
                f"No {self.what}s are registered: import domainssl.methods before validating "
                "a run config."
            )
        if name not in self.models:
            raise PydanticCustomError(
                "unknown_choice",
                "unknown {what} {name!r}; registered: {choices}",
                {"what": self.what, "name": name, "choices": ", ".join(self.models)},
            )
        return self.models[name]

    def validate(self, value: Any) -> SectionT:
        """``value`` (a mapping naming its choice, or a model) as the chosen model."""
        if isinstance(value, Section):
            value = value.model_dump()
        if not isinstance(value, dict) or not isinstance(value.get(self.key), str):
            raise PydanticCustomError(
                "missing_choice", "needs a {key}", {"key": f"{self.section}.{self.key}"}
            )
        return self.model(value[self.key]).model_validate(value)


METHOD_CONFIGS: SectionChoices[MethodConfig] = SectionChoices("method", "name", "method")
"""Section models of the SSL methods, by ``method.name``."""
VIEW_CONFIGS: SectionChoices[ViewsConfig] = SectionChoices("views", "preset", "view preset")
"""Section models of the view presets, by ``views.preset``."""
DEFAULT_METHOD = "simclr"


class DataConfig(Section):
    """Where the images come from and how they are batched."""

    path: str | None = None
    """Folder of chips, a GeoTIFF scene, a folder of scenes, or a torchgeo data set
    ``torchgeo:<Class>:<root>``; None = embedded demo."""
    kind: Literal["auto", "chips", "scenes", "slides"] = "auto"
    """``chips``: one sample per file; ``scenes``: random windows from large rasters;
    ``slides``: tissue patches of whole-slide images."""
    bands: list[str] | None = None
    """Band names; by default read from the file (descriptions) or ``B1..Bn``. A torchgeo
    data set reads only these of its bands (by its band names)."""
    res: float | None = None
    """torchgeo raster data sets (``--data torchgeo:<Class>:<root>``): resolution in CRS
    units to read at; None = the class's default (for most, the files' own)."""
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


class ModelConfig(Section):
    """Backbone from timm by name; ``in_chans`` always equals the band count."""

    backbone: str = "resnet18"
    init: str | None = None
    """Weights to start from (``--init``): a run or transfer folder, a weight file, a timm
    name (``resnet50.a1_in1k``), ``hf-hub:org/name`` (local cache) or
    ``torchgeo:<Weights>.<MEMBER>``. A named architecture replaces ``backbone``."""
    adapt_in_chans: Literal["error", "mean_repeat", "by_name"] = "error"
    """When ``init`` was trained on other bands than the data's: ``by_name`` matches bands by
    name (the rest get the mean filter), ``mean_repeat`` gives every band the mean filter."""
    init_normalization: Literal["data", "weights"] = "data"
    """Standardize with the data's per-band statistics, or with the init's own (for the bands
    matched to the weights' bands) where they are known."""
    small_input: bool = True
    """Drop the stem's max-pool (keeps resolution for small chips, as CIFAR-style ResNets do)."""
    timm_kwargs: dict[str, Any] = {}
    """More ``timm.create_model`` arguments, recorded in the export (ViTs: ``img_size``,
    ``patch_size``, ``dynamic_img_size``)."""


class OptimizerConfig(Section):
    name: Literal["sgd", "lars", "adamw"] = "lars"
    lr: float = 1.2
    """Peak learning rate (reached after warmup)."""
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_fraction: float = 0.05
    """Share of the run (steps or time budget) spent in linear warmup."""
    init_lr_scale: float = 0.1
    """Continued pretraining (``model.init`` set): the peak learning rate is ``lr`` times this."""
    init_warmup_fraction: float = 0.01
    """Continued pretraining: the warmup share (the weights need no long warmup)."""
    layer_decay: float | None = None
    """ViT backbones: layer-wise learning-rate decay (e.g. 0.75; block i of L learns at
    ``layer_decay ** (L - i)`` of the rate): keeps a pretrained init's early layers."""

    def peak_lr(self, continued: bool) -> float:
        return self.lr * (self.init_lr_scale if continued else 1.0)

    def warmup(self, continued: bool) -> float:
        return self.init_warmup_fraction if continued else self.warmup_fraction


class TrainerConfig(Section):
    epochs: int | None = 30
    """Maximum epochs. ``pretrain --max-time`` without ``--epochs`` sets None: train until the
    time budget is spent. With both, whichever ends first stops the run."""
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
    """Log loss and learning rate every this many steps (every step when an epoch is shorter)."""
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = ["tensorboard"]
    """Where metrics go besides ``metrics.csv`` (always written); [] for none."""
    progress_every_s: float = 30.0
    """Seconds between progress lines when the output is a file or pipe, not a terminal."""
    collapse_threshold: float = 0.1
    """Warn when the embedding std falls below this share of its healthy value 1/sqrt(dim)."""
    monitor: str | None = None
    """A labeled set (``--monitor``: class folders or a ``path,label`` CSV, as ``transfer``
    reads) scored by a cosine kNN on the backbone's frozen features during training, logged
    as ``monitor/knn_acc``; None = no monitor."""
    monitor_every_n_epochs: int = 1
    """Score the monitor set after every this many epochs (and after the last)."""
    monitor_max_samples: int = 5000
    """At most this many images of the monitor set are kept (a seeded subset of each part)."""

    @field_validator("max_time")
    @classmethod
    def _check_time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _some_limit(self) -> TrainerConfig:
        if self.epochs is None and self.max_time is None:
            raise ValueError("trainer.epochs is null and no trainer.max_time: give one of them")
        return self

    @property
    def max_time_s(self) -> float | None:
        return None if self.max_time is None else parse_duration(self.max_time)


class RunConfig(Section):
    """A whole pretraining run."""

    domain: Literal["eo", "pathology", "reid"] = "eo"
    out: str = "runs"
    """Parent folder of run folders."""
    name: str | None = None
    """Run folder name; default ``<domain>-<method>-<timestamp>``."""
    data: DataConfig = DataConfig()
    views: SerializeAsAny[ViewsConfig]
    """Keys of the preset ``views.preset`` (default: the method's preset, else the domain's)."""
    model: ModelConfig = ModelConfig()
    method: SerializeAsAny[MethodConfig]
    """Keys of the method ``method.name`` (default simclr)."""
    optimizer: OptimizerConfig = OptimizerConfig()
    trainer: TrainerConfig = TrainerConfig()

    @model_validator(mode="before")
    @classmethod
    def _choose_method_and_preset(cls, tree: Any) -> Any:
        return with_default_choices(tree) if isinstance(tree, dict) else tree

    @field_validator("method", mode="before")
    @classmethod
    def _method_of_its_name(cls, value: Any) -> MethodConfig:
        return METHOD_CONFIGS.validate(value)

    @field_validator("views", mode="before")
    @classmethod
    def _views_of_their_preset(cls, value: Any) -> ViewsConfig:
        return VIEW_CONFIGS.validate(value)


def with_default_choices(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` with ``method.name`` (default simclr) and ``views.preset`` (the method's
    preset, else the domain's) filled in where missing."""
    tree = dict(tree)
    method = tree.get("method")
    if method is None or (isinstance(method, dict) and "name" not in method):
        tree["method"] = method = {"name": DEFAULT_METHOD, **(method or {})}
    views = tree.get("views")
    if views is None or (isinstance(views, dict) and "preset" not in views):
        name = method.name if isinstance(method, MethodConfig) else _get(method, "name")
        model = METHOD_CONFIGS.models.get(name) if isinstance(name, str) else None
        preset = (model.default_preset if model is not None else None) or tree.get("domain")
        tree["views"] = {"preset": preset or "eo", **(views or {})}
    return tree


def without_foreign_keys(tree: dict[str, Any]) -> dict[str, Any]:
    """A saved run config with the keys its method and view preset do not have left out.

    Run folders written before each method and preset had its own section hold every
    method's and preset's keys; resuming them reads only the chosen ones.
    """
    tree = with_default_choices(tree)
    choices: dict[str, SectionChoices[Any]] = {"method": METHOD_CONFIGS, "views": VIEW_CONFIGS}
    for section, registry in choices.items():
        part = tree.get(section)
        model = registry.models.get(_get(part, registry.key))
        if model is not None and isinstance(part, dict):
            tree[section] = {k: v for k, v in part.items() if k in model.model_fields}
    return tree


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


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
        raise DomainSSLError(_explain(err, source, tree)) from None


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


def _explain(err: ValidationError, source: str, tree: dict[str, Any]) -> str:
    lines = [f"Invalid config ({source}):"]
    for problem in err.errors():
        loc = [str(part) for part in problem["loc"]]
        where = ".".join(loc)
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {_unknown_key(loc, tree)}")
        elif problem["type"] in ("unknown_choice", "missing_choice"):
            lines.append(f"  {where}: {problem['msg']}")
        else:
            lines.append(f"  {where}: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)


def _unknown_key(loc: list[str], tree: dict[str, Any]) -> str:
    """The message for an unknown key: the keys valid where it stands."""
    where = ".".join(loc)
    choices: dict[str, SectionChoices[Any]] = {"method": METHOD_CONFIGS, "views": VIEW_CONFIGS}
    if len(loc) == 2 and loc[0] in choices:
        registry = choices[loc[0]]
        name = with_default_choices(tree)[loc[0]][registry.key]
        valid = ", ".join(registry.models[name].model_fields)
        return (
            f"unknown key '{where}': {registry.what} '{name}' has no key '{loc[1]}'. "
            f"Valid keys of {name}: {valid}"
        )
    model: type[BaseModel] = RunConfig
    for key in loc[:-1]:
        annotation = model.model_fields[key].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return f"unknown key '{where}'. Valid keys here: {', '.join(model.model_fields)}"


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (what the run folder stores)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
