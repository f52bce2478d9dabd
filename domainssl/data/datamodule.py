"""The training data of a run: from the config to a dataset with its band metadata, as a
LightningDataModule that prepares once into the run folder and reads on every process."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from domainssl.config import DataConfig, RunConfig
from domainssl.console import say
from domainssl.data.eo import SceneWindows, list_scenes
from domainssl.data.folder import ChipFolder, ImageTransform, InMemoryChips, apply_transform
from domainssl.data.imageio import IMAGE_SUFFIXES, RGB_NAMES
from domainssl.data.pathology import SlidePatches, is_slide, list_slides, open_slide_grids
from domainssl.data.proposal_cache import ProposalBoxes, compute_proposals
from domainssl.data.reid import (
    DATA_HELP,
    ModalityPairs,
    ModalityPairSampler,
    PersonImages,
    training_images,
)
from domainssl.data.samplers import (
    DrawSampler,
    EpochSampler,
    Shard,
    ShuffleSampler,
    first_epoch,
)
from domainssl.data.stain_setup import StainSetup
from domainssl.data.stats import BandStats, compute_band_stats
from domainssl.data.torchgeo_source import TorchGeoWindows, is_torchgeo_spec, torchgeo_dataset
from domainssl.data.windowing import large_images
from domainssl.errors import DomainSSLError, SkippedInputsWarning
from domainssl.paths import DATASETS_DIR, REPO_ROOT, repo_resource
from domainssl.views.proposals import ProposalSettings
from domainssl.views.settings import CropViewsConfig

DEMO_DATA = {
    "eo": DATASETS_DIR / "eurosat_demo",
    "pathology": DATASETS_DIR / "pathology_demo" / "slides",
}


@dataclass
class PretrainData:
    """The training dataset and what travels with it into the export."""

    dataset: Dataset
    band_names: list[str]
    stats: BandStats
    source: str
    mpp: float | None
    """Microns per pixel of the samples, when known (slides at ``data.mpp``)."""
    skipped: list[str] = field(default_factory=list)
    """Unreadable input files left out, one line each (file and problem)."""
    stain_norm: dict | None = None
    """The fitted stain normalization applied to every sample (what the export records)."""

    @property
    def in_chans(self) -> int:
        return len(self.band_names)


def resolve_data_path(config: DataConfig, domain: str) -> Path:
    """``data.path`` or the embedded demo of the domain.

    A relative path that does not exist from the current folder is looked up from the
    repository root, where the shipped configs point (``datasets/...``).
    """
    if config.path is not None and is_torchgeo_spec(config.path):
        return Path(config.path)  # torchgeo:<Class>:<root>, parsed when the dataset is built
    if config.path is None:
        if domain not in DEMO_DATA:
            raise DomainSSLError(f"--domain {domain} has no embedded demo data. {DATA_HELP}")
        return repo_resource(DEMO_DATA[domain])
    path = Path(config.path).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def detect_kind(path: Path, kind: str, domain: str, sample_size: int | None = None) -> str:
    """Scenes for a GeoTIFF file; slides for a slide, CSV or folder of slides; else chips.

    A folder holds chips unless ``data.kind`` says otherwise, in pathology it holds
    slides, or (given ``sample_size``) its images are more than twice the sample size: then
    they are windowed like scenes. ``torchgeo:<Class>:<root>`` is a torchgeo data set.
    """
    if is_torchgeo_spec(path):
        return "torchgeo"
    if kind != "auto":
        return kind
    if domain == "pathology":
        is_slides = path.suffix.lower() == ".csv" or (path.is_file() and is_slide(path))
        is_slides |= path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES
        has_slides = path.is_dir() and any(is_slide(p) for p in path.iterdir() if p.is_file())
        if is_slides or has_slides:
            return "slides"
    if path.is_file():
        return "scenes"
    large = sample_size is not None and large_images(path, sample_size) is not None
    return "scenes" if large else "chips"


def build_dataset(
    config: DataConfig, path: Path, domain: str, run_dir: Path, seed: int = 0
) -> tuple[Dataset, list[str]]:
    """Dataset and band names for chips, scenes or slides (grids cached in ``run_dir``;
    random windows and patches drawn from ``seed``); re-ID: the training part of a
    SYSU-MM01, RegDB or generic RGB-IR layout."""
    if domain == "reid":
        return PersonImages(training_images(path), config.person_size), list(RGB_NAMES)
    kind = detect_kind(path, config.kind, domain, config.sample_size)
    if kind == "torchgeo":
        return torchgeo_dataset(str(path), config, seed)
    if kind == "scenes":
        if path.is_dir() and config.kind == "auto":
            height, width = large_images(path, config.sample_size) or (0, 0)
            say(
                f"Images in {path} are about {width}x{height} px, more than twice "
                f"data.sample_size={config.sample_size}: sampling native-resolution windows "
                f"({config.samples_per_epoch} per epoch; data.kind=chips resizes them instead)."
            )
        scenes = SceneWindows(
            list_scenes(path),
            size=config.sample_size,
            length=config.samples_per_epoch,
            max_nodata_fraction=config.max_nodata_fraction,
            in_chans=config.in_chans,
            seed=seed,
        )
        return scenes, config.bands or scenes.band_names
    if kind == "slides":
        grids = open_slide_grids(
            list_slides(path),
            run_dir / "tissue_grids",
            config.sample_size,
            config.mpp,
            config.tissue_threshold,
            config.slide_mpp,
        )
        patches = SlidePatches(grids, config.samples_per_epoch, seed=seed)
        return patches, config.bands or list(RGB_NAMES)
    chips = ChipFolder(path, config.sample_size, config.in_chans, config.strict)
    names = config.bands or chips.band_names
    bytes_per_chip = chips.in_chans * config.sample_size**2 * 4
    if len(chips) * bytes_per_chip <= config.cache_in_memory_gb * 1e9:
        return InMemoryChips(chips, num_workers=config.num_workers), names
    return chips, names


def prepare_pretrain_data(
    config: DataConfig,
    domain: str,
    run_dir: Path,
    seed: int = 0,
    preprocess: Callable[[Dataset], ImageTransform | None] | None = None,
    proposals: ProposalSettings | None = None,
) -> PretrainData:
    """Build the dataset and load (or compute and cache) its per-band stats.

    ``preprocess``, given the dataset, returns a deterministic per-image step (such as
    stain normalization) applied to every sample before the stats and the views.
    ``proposals``, when given, makes every sample carry one object proposal ``box``
    (cached in ``run_dir/proposals`` for chips; computed per window for scenes and slides).
    """
    path = resolve_data_path(config, domain)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedInputsWarning)
        dataset, band_names = build_dataset(config, path, domain, run_dir, seed)
    for warning in caught:  # shown now, and the skipped files kept for the end of the run
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    skipped = [
        line.strip()
        for warning in caught
        if issubclass(warning.category, SkippedInputsWarning)
        for line in str(warning.message).splitlines()[1:]
    ]
    transform = preprocess(dataset) if preprocess is not None else None
    if transform is not None:
        dataset = apply_transform(dataset, transform)
    channels = _channels(dataset)
    if len(band_names) != channels:
        raise DomainSSLError(f"data.bands names {len(band_names)} bands but {path} has {channels}.")
    stats_file = run_dir / "band_stats.json"
    source = str(path) if transform is None else f"{path} (preprocessed: {transform})"
    if stats_file.is_file() and BandStats.load(stats_file).source == source:
        stats = BandStats.load(stats_file)
    else:
        stats = compute_band_stats(dataset, config.stats_samples, source, seed=seed)
        stats.save(stats_file)
    kind = detect_kind(path, config.kind, domain, config.sample_size)
    if proposals is not None:
        store = None
        if kind == "chips":
            cache = run_dir / "proposals"
            store = compute_proposals(dataset, cache, proposals, source, config.num_workers)
        dataset = ProposalBoxes(dataset, store, proposals)
    mpp = config.mpp if kind == "slides" else None
    return PretrainData(dataset, band_names, stats, str(path), mpp, skipped)


def _channels(dataset: Dataset) -> int:
    first = dataset[0]["image"]
    assert isinstance(first, torch.Tensor)
    return int(first.shape[0])


def train_loader(
    data: PretrainData,
    config: DataConfig,
    seed: int = 0,
    epoch_of: Callable[[], int] = first_epoch,
    shard: Shard = Shard(),
) -> DataLoader:
    """This process's batches: what it reads and its random state are a function of
    ``(seed, epoch, rank)`` (:mod:`domainssl.data.samplers`); in-memory chips need no worker
    processes. Re-ID images come as unpaired (RGB, infrared) pairs in random order.

    The last incomplete batch is dropped when the process has more than one batch, so a
    process with fewer samples than ``batch_size`` still trains on what it has.
    """
    dataset: Dataset = data.dataset
    sampler: EpochSampler
    workers = config.num_workers
    if isinstance(data.dataset, PersonImages):
        modalities = [item.modality for item in data.dataset.images]
        sampler = ModalityPairSampler(modalities, seed, epoch_of, shard)
        dataset = ModalityPairs(data.dataset)
    elif draws_at_random(data.dataset):
        sampler = DrawSampler(len(data.dataset), seed, epoch_of, shard)  # type: ignore[arg-type]
    else:
        sampler = ShuffleSampler(len(data.dataset), seed, epoch_of, shard)  # type: ignore[arg-type]
        in_memory = getattr(data.dataset, "in_memory", isinstance(data.dataset, InMemoryChips))
        workers = 0 if in_memory else workers
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=len(sampler) > config.batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def draws_at_random(dataset: Dataset) -> bool:
    """Whether ``dataset`` (under any wrapper) is random draws: scene windows, slide patches."""
    draws = SceneWindows | TorchGeoWindows | SlidePatches
    while not isinstance(dataset, draws) and hasattr(dataset, "source"):
        dataset = dataset.source
    return isinstance(dataset, SceneWindows | TorchGeoWindows) or (
        isinstance(dataset, SlidePatches) and dataset.random
    )


def check_steps(loader: DataLoader, limit: int | float, shard: Shard) -> None:
    """Stop before training when a process would train zero steps, saying why."""
    batches = len(loader)
    steps = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    samples = len(loader.sampler)  # type: ignore[arg-type]
    if steps < 1 or samples < 2:
        raise DomainSSLError(
            f"Each of the {shard.world} processes gets {samples} samples per epoch "
            f"(batch size {loader.batch_size}, trainer.limit_train_batches={limit}): that "
            "is no training step. Use more data (data.samples_per_epoch for scenes and "
            "slides), fewer processes (--devices), or a larger limit_train_batches."
        )


class PretrainDataModule(L.LightningDataModule):
    """A run's training data: prepared once into the run folder, read by every process.

    :meth:`prepare_data` computes what is expensive and caches it in the run folder
    (tissue grids, stain fit, per-band statistics, object proposals); :meth:`setup` builds
    the dataset from those caches. After ``setup``, :attr:`data` holds the dataset and the
    band names and statistics the method and the export need. A method may train on a
    subclass that changes what :meth:`build` returns (ORL's mined object pairs).

    Args:
        config: the run config.
        run_dir: the run folder (where the caches live).
    """

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        super().__init__()
        self.config, self.run_dir = config, run_dir
        self.prepare_data_per_node = False  # one preparation for all nodes (a shared run folder)
        self._data: PretrainData | None = None
        self.preparation_seconds = 0.0
        """Time :meth:`prepare_data` took in this process (counted in ``--max-time``)."""

    def prepare_data(self) -> None:
        """Compute and cache everything expensive; under a Trainer this runs on global rank 0
        only, the others wait (kept for :meth:`setup` in this process)."""
        start = time.monotonic()
        if self._data is None:
            self._data = self.build()
        self.preparation_seconds = time.monotonic() - start
        say(f"Data prepared in {self.preparation_seconds:.1f} s: {self._data.source}")

    def setup(self, stage: str) -> None:
        """Build the dataset from the run folder's caches (a no-op when already built)."""
        if self._data is None:
            self._data = self.build()

    @property
    def data(self) -> PretrainData:
        if self._data is None:
            raise RuntimeError("PretrainDataModule.setup() has not run yet.")
        return self._data

    def build(self) -> PretrainData:
        """The dataset, with stain normalization and object proposals when configured."""
        cfg = self.config
        stain = StainSetup(cfg.data, self.run_dir)
        views, proposals = cfg.views, None
        if isinstance(views, CropViewsConfig) and views.crops != "random":
            proposals = ProposalSettings.from_views(views)
        data = prepare_pretrain_data(
            cfg.data, cfg.domain, self.run_dir, cfg.trainer.seed, stain, proposals
        )
        data.stain_norm = stain.state
        return data

    def train_dataloader(self) -> DataLoader:
        """This process's batches, a function of (seed, epoch, global rank); a process that
        would train zero steps stops the run before training."""
        assert self.trainer is not None, "the training loader is read by a Trainer"
        shard = Shard(self.trainer.global_rank, self.trainer.world_size)
        seed = self.config.trainer.seed
        loader = train_loader(self.data, self.config.data, seed, self._current_epoch, shard)
        check_steps(loader, self.config.trainer.limit_train_batches, shard)
        return loader

    def _current_epoch(self) -> int:
        assert self.trainer is not None, "the training loader is read by a Trainer"
        return self.trainer.current_epoch
