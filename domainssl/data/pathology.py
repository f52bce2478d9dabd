"""Whole-slide images as patches at a target resolution, tissue only (OpenSlide).

A slide's patch grid is computed once (tissue detection on a thumbnail) and cached as
JSON; patches are read from the pyramid level closest to the target resolution and
resized, so 0.5 µm/px patches come out right from a 0.25 µm/px slide.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import openslide
import torch
from PIL import Image
from torch.utils.data import Dataset

from domainssl.data.folder import Sample
from domainssl.data.seeds import draw_generator
from domainssl.data.tissue import cell_fractions, tissue_mask
from domainssl.errors import DomainSSLError, SkippedInputsWarning
from domainssl.io import atomic_write_text

THUMBNAIL_SIDE = 2048
SLIDE_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff", ".dcm"}
)
"""Extensions of whole-slide formats: such a file in a folder is a slide or a named problem,
never silently dropped."""


@dataclass
class SlideGrid:
    """Tissue patch positions of one slide (level-0 pixel coordinates of the top-left)."""

    path: str
    slide_mpp: float
    patch_size: int
    mpp: float
    tissue_threshold: float
    coords: list[tuple[int, int]]

    @property
    def level0_size(self) -> int:
        """Side in level-0 pixels of one patch at the target resolution."""
        return round(self.patch_size * self.mpp / self.slide_mpp)


def list_slides(path: Path) -> list[Path]:
    """Slides in a folder (whatever OpenSlide recognises), or listed in a CSV manifest."""
    if not path.exists():
        raise DomainSSLError(f"Data path {path} does not exist: check --data.")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as file:
            rows = list(csv.reader(file))
        if rows and rows[0] and rows[0][0].strip().lower() == "path":
            rows = rows[1:]
        slides = [(path.parent / row[0].strip()).resolve() for row in rows if row]
    elif path.is_file():
        slides = [path]
    else:
        slides = sorted(p for p in path.iterdir() if p.is_file() and looks_like_slide(p))
    if not slides:
        raise DomainSSLError(
            f"No slides in {path}: give a folder of whole-slide images (SVS, NDPI, MRXS, "
            "SCN, pyramidal TIFF, ...) or a CSV whose first column is the slide path."
        )
    return slides


def is_slide(path: Path) -> bool:
    """Whether OpenSlide recognises the file's format (it may still fail to open it)."""
    try:
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except Exception:
        return False


def looks_like_slide(path: Path) -> bool:
    """Whether a file is meant as a slide: a slide extension, or a format OpenSlide reads."""
    return path.suffix.lower() in SLIDE_SUFFIXES or is_slide(path)


def not_a_slide(path: Path) -> str | None:
    """Why OpenSlide will not read ``path`` as a slide (None when it recognises the format)."""
    if is_slide(path):
        return None
    if path.stat().st_size == 0:
        return "not a slide: the file is empty"
    return (
        "not a slide: OpenSlide does not recognise its format (a truncated or corrupt file, "
        "or a plain TIFF without tiles)"
    )


def slide_resolution(slide: openslide.OpenSlide, path: Path, fallback: float | None) -> float:
    """Microns per pixel of level 0 as the slide records it, else ``fallback``."""
    value = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    if value is None and fallback is not None:
        return fallback
    if value is None:
        raise DomainSSLError(
            f"{path} has no resolution metadata (microns per pixel). Pass the resolution of "
            "its full-resolution level with --set data.slide_mpp=0.25 (for example)."
        )
    return float(value)


def build_grid(
    path: Path, patch_size: int, mpp: float, tissue_threshold: float, slide_mpp: float | None
) -> SlideGrid:
    """Tissue-only patch grid of a slide at ``mpp`` µm/px."""
    with openslide.OpenSlide(str(path)) as slide:
        native = slide_resolution(slide, path, slide_mpp)
        grid = SlideGrid(str(path), native, patch_size, mpp, tissue_threshold, [])
        width, height = slide.dimensions
        thumbnail = np.asarray(slide.get_thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE)).convert("RGB"))
    mask = tissue_mask(thumbnail)
    step = grid.level0_size
    xs, ys = np.meshgrid(
        np.arange(0, width - step + 1, step), np.arange(0, height - step + 1, step)
    )
    corners = np.stack([xs.ravel(), ys.ravel()], axis=1)  # (N, 2) level-0
    scale = np.array([mask.shape[1] / width, mask.shape[0] / height])
    boxes = np.concatenate([corners * scale, (corners + step) * scale], axis=1).astype(int)
    keep = cell_fractions(mask, boxes) >= tissue_threshold
    grid.coords = [(int(x), int(y)) for x, y in corners[keep]]
    return grid


def cached_grid(
    path: Path,
    cache_dir: Path,
    patch_size: int,
    mpp: float,
    tissue_threshold: float,
    slide_mpp: float | None,
) -> SlideGrid:
    """``build_grid`` with a JSON cache keyed by the slide file and the grid settings."""
    stat = path.stat()
    settings = (path.resolve(), stat.st_size, stat.st_mtime_ns, patch_size, mpp, tissue_threshold)
    key = "|".join(map(str, (*settings, slide_mpp)))
    cache = cache_dir / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        data["coords"] = [tuple(c) for c in data["coords"]]
        return SlideGrid(**data)
    grid = build_grid(path, patch_size, mpp, tissue_threshold, slide_mpp)
    atomic_write_text(cache, json.dumps(asdict(grid)))
    return grid


def best_level(slide: openslide.OpenSlide, downsample: float) -> int:
    """The coarsest level at least as fine as ``downsample``, with 1% tolerance: level
    sizes are rounded, so a "2x" level is often 2.0005x and OpenSlide's own
    ``get_best_level_for_downsample(2.0)`` would fall back to level 0 (4x the pixels)."""
    fine_enough = [i for i, d in enumerate(slide.level_downsamples) if d <= downsample * 1.01]
    return max(fine_enough, key=lambda i: slide.level_downsamples[i], default=0)


def read_patch(slide: openslide.OpenSlide, grid: SlideGrid, x: int, y: int) -> np.ndarray:
    """One (3, P, P) uint8 patch: read at the best pyramid level, resized to P."""
    size0 = grid.level0_size
    level = best_level(slide, size0 / grid.patch_size)
    size = max(round(size0 / slide.level_downsamples[level]), 1)
    region = slide.read_region((x, y), level, (size, size)).convert("RGB")
    if size != grid.patch_size:
        region = region.resize((grid.patch_size, grid.patch_size), Image.Resampling.BILINEAR)
    return np.asarray(region).transpose(2, 0, 1).copy()


class SlidePatches(Dataset[Sample]):
    """Tissue patches of many slides: random (weighted by tissue area) or grid order.

    Args:
        grids: one patch grid per slide.
        length: samples per epoch in random mode (ignored in grid mode).
        random: item ``key`` is draw ``key``, a pure function of ``(seed, key)``: a slide in
            proportion to its tissue patches and a random patch of it; otherwise every grid
            patch once, in order (for embedding and inference).
        seed: the run seed the random draws derive from.
    """

    def __init__(
        self, grids: list[SlideGrid], length: int, random: bool = True, seed: int = 0
    ) -> None:
        self.grids = [g for g in grids if g.coords]
        if not self.grids:
            raise DomainSSLError("No slide has tissue patches: nothing to train on.")
        self.random, self.length, self.seed = random, length, seed
        counts = torch.tensor([float(len(g.coords)) for g in self.grids])
        self.weights = counts / counts.sum()
        self.index = [(s, i) for s, g in enumerate(self.grids) for i in range(len(g.coords))]
        self._handles: dict[int, openslide.OpenSlide] = {}
        self._pid = -1

    def __len__(self) -> int:
        return self.length if self.random else len(self.index)

    def _slide(self, index: int) -> openslide.OpenSlide:
        if self._pid != os.getpid():  # each worker process opens its own handles
            self._handles, self._pid = {}, os.getpid()
        if index not in self._handles:
            self._handles[index] = openslide.OpenSlide(self.grids[index].path)
        return self._handles[index]

    def __getitem__(self, index: int) -> Sample:
        if self.random:
            generator = draw_generator(self.seed, index)
            slide = int(torch.multinomial(self.weights, 1, generator=generator))
            patch = int(torch.randint(len(self.grids[slide].coords), (), generator=generator))
        else:
            slide, patch = self.index[index]
        grid = self.grids[slide]
        x, y = grid.coords[patch]
        image = read_patch(self._slide(slide), grid, x, y)
        return {"image": torch.from_numpy(image), "label": -1, "slide": slide, "x": x, "y": y}


def open_slide_grids(
    slides: list[Path],
    cache_dir: Path,
    patch_size: int,
    mpp: float,
    tissue_threshold: float,
    slide_mpp: float | None,
) -> list[SlideGrid]:
    """Grids of all slides; unreadable or tissue-free slides are reported and skipped."""
    grids, problems = [], []
    for path in slides:
        reason = not_a_slide(path)
        if reason is not None:
            problems.append(f"{path}: {reason}")
            continue
        try:
            grid = cached_grid(path, cache_dir, patch_size, mpp, tissue_threshold, slide_mpp)
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
            problems.append(f"{path}: OpenSlide cannot open it ({err})")
            continue
        if not grid.coords:
            problems.append(f"{path}: no tissue found (threshold {tissue_threshold})")
        grids.append(grid)
    if problems:
        warnings.warn(
            f"{len(problems)} of {len(slides)} slides skipped:\n  " + "\n  ".join(problems),
            SkippedInputsWarning,
            stacklevel=2,
        )
    if not any(g.coords for g in grids):
        raise DomainSSLError(
            "No usable slide: " + "; ".join(problems) + ". Check the files, or lower "
            "data.tissue_threshold if the tissue is faint."
        )
    return grids
