"""The training data of a run: from the config to a dataset with its band metadata, as a
LightningDataModule that prepares once into the run folder and reads on every process."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from domainssl.config import DataConfig, RunConfig
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
from domainssl.data.samplers import epoch_seeded
from domainssl.data.stain_setup import StainSetup
from domainssl.data.stats import BandStats, compute_band_stats
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
    if config.path is None:
        if domain not in DEMO_DATA:
            raise DomainSSLError(f"--domain {domain} has no embedded demo data. {DATA_HELP}")
        return repo_resource(DEMO_DATA[domain])
    path = Path(config.path).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def detect_kind(path: Path, kind: str, domain: str) -> str:
    """Scenes for a GeoTIFF file; slides for a slide, CSV or folder of slides; else chips.

    A folder holds chips unless ``data.kind`` says otherwise, or, in pathology, it
    holds slides.
    """
    if kind != "auto":
        return kind
    if domain == "pathology":
        is_slides = path.suffix.lower() == ".csv" or (path.is_file() and is_slide(path))
        is_slides |= path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES
        has_slides = path.is_dir() and any(is_slide(p) for p in path.iterdir() if p.is_file())
        return "slides" if is_slides or has_slides else "chips"
    return "scenes" if path.is_file() else "chips"


def build_dataset(
    config: DataConfig, path: Path, domain: str, run_dir: Path
) -> tuple[Dataset, list[str]]:
    """Dataset and band names for chips, scenes or slides (grids cached in ``run_dir``);
    re-ID: the training part of a SYSU-MM01, RegDB or generic RGB-IR layout."""
    if domain == "reid":
        return PersonImages(training_images(path), config.person_size), list(RGB_NAMES)
    kind = detect_kind(path, config.kind, domain)
    if kind == "scenes":
        scenes = SceneWindows(
            list_scenes(path),
            size=config.sample_size,
            length=config.samples_per_epoch,
            max_nodata_fraction=config.max_nodata_fraction,
            in_chans=config.in_chans,
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
        return SlidePatches(grids, config.samples_per_epoch), config.bands or list(RGB_NAMES)
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
        dataset, band_names = build_dataset(config, path, domain, run_dir)
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
    kind = detect_kind(path, config.kind, domain)
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


def train_loader(data: PretrainData, config: DataConfig) -> DataLoader:
    """Shuffled, drop-last batches; in-memory chips need no worker processes.

    Re-ID images come as unpaired (RGB, infrared) pairs in random order.
    """
    if isinstance(data.dataset, PersonImages):
        modalities = [item.modality for item in data.dataset.images]
        pairs = ModalityPairSampler(modalities, seed=torch.initial_seed() % 2**31)
        return DataLoader(
            ModalityPairs(data.dataset),
            batch_size=config.batch_size,
            sampler=pairs,
            drop_last=len(pairs) > config.batch_size,
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
        )
    in_memory = getattr(data.dataset, "in_memory", isinstance(data.dataset, InMemoryChips))
    workers = 0 if in_memory else config.num_workers
    return DataLoader(
        data.dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(data.dataset) > config.batch_size,  # type: ignore[arg-type]
        num_workers=workers,
        persistent_workers=workers > 0,
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
        self._data: PretrainData | None = None

    def prepare_data(self) -> None:
        """Compute and cache everything expensive (kept for :meth:`setup` in this process)."""
        if self._data is None:
            self._data = self.build()

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
        """Shuffled batches whose order and views are a function of (seed, epoch)."""
        loader = train_loader(self.data, self.config.data)
        return epoch_seeded(loader, self._current_epoch, self.config.trainer.seed)

    def _current_epoch(self) -> int:
        assert self.trainer is not None, "the training loader is read by a Trainer"
        return self.trainer.current_epoch
