"""What an archive run embeds: the slides and scenes of a folder or CSV manifest, each with
the name its outputs take, and the files that look like inputs but cannot be read as one
(named in the manifest, never dropped)."""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import rasterio
from affine import Affine

from domainssl.data.pathology import SLIDE_SUFFIXES, not_a_slide
from domainssl.errors import DomainSSLError
from domainssl.infer.wsi.infer import is_slide_source

CHIP_SIDE_MAX = 512
"""A TIFF up to this side (px) in a folder of them is a chip, larger ones are scenes."""
PROBE_FILES = 20
Kind = Literal["slide", "scene", "unreadable", "not a slide"]


@dataclass(frozen=True)
class Item:
    """One input file: a slide, a scene, or a file that cannot be embedded (``problem``)."""

    path: Path
    kind: Kind
    problem: str = ""

    @property
    def name(self) -> str:
        """The stem its outputs are named after (``<name>.h5``, ``<name>.tif``, ...)."""
        return self.path.stem


def is_georeferenced(path: Path) -> bool:
    """Whether GDAL opens ``path`` as a raster with a CRS or a geotransform."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as src:
                return bool(src.crs or src.transform != Affine.identity())
        except rasterio.errors.RasterioError:
            return False


def classify(path: Path) -> Item:
    """The item ``path`` is: a slide (OpenSlide reads it), a scene (a georeferenced raster)
    or, with its reason, a file that is neither."""
    if not path.is_file():
        return Item(path, "unreadable", "the file does not exist")
    if is_slide_source(path):
        return Item(path, "slide")
    if is_georeferenced(path):
        return Item(path, "scene")
    reason = not_a_slide(path)
    if reason is None:  # OpenSlide knows the format, but it is neither slide nor scene
        return Item(path, "not a slide", "not a slide: an image without a pyramid or RGB bands")
    if path.stat().st_size and path.suffix.lower() in (".tif", ".tiff"):
        try:
            with rasterio.open(path):
                return Item(path, "not a slide", "not a slide, and not a georeferenced scene")
        except rasterio.errors.RasterioError:
            pass
    return Item(path, "unreadable", reason + "; GDAL cannot read it as a scene either")


def _manifest_paths(manifest: Path) -> list[Path]:
    """First-column paths of a CSV manifest (header ``path`` optional), relative to it."""
    with manifest.open(newline="") as file:
        rows = [row for row in csv.reader(file) if row and row[0].strip()]
    if rows and rows[0][0].strip().lower() in ("path", "item"):
        rows = rows[1:]
    return [(manifest.parent / row[0].strip()).resolve() for row in rows]


def _is_large_or_unreadable(path: Path) -> bool:
    if is_slide_source(path):
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as src:
                return max(src.width, src.height) > CHIP_SIDE_MAX
        except rasterio.errors.RasterioError:
            return True


def is_archive(data: Path) -> bool:
    """Whether ``data`` is an archive of slides and scenes rather than a folder of chips: a
    CSV manifest or a single file, or a folder where one of the first ``PROBE_FILES`` files
    with a slide or TIFF extension is a slide, a raster larger than ``CHIP_SIDE_MAX`` px,
    or unreadable (named in the manifest, then)."""
    if data.suffix.lower() == ".csv" or data.is_file():
        return True
    candidates = (p for p in sorted(data.iterdir()) if p.suffix.lower() in SLIDE_SUFFIXES)
    return any(_is_large_or_unreadable(p) for p in islice(candidates, PROBE_FILES))


def list_items(data: Path) -> list[Item]:
    """Every slide and scene of a folder (files with a slide or GeoTIFF extension) or CSV
    manifest, or a single file; sorted by path. Two items whose outputs would share a name
    are an error."""
    if not data.exists():
        raise DomainSSLError(f"Data path {data} does not exist: check --data.")
    if data.suffix.lower() == ".csv":
        paths = _manifest_paths(data)
    elif data.is_file():
        paths = [data]
    else:
        paths = [p for p in data.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES]
    items = [classify(p) for p in sorted(set(paths))]
    if not items:
        raise DomainSSLError(
            f"No slides or scenes in {data}: give a folder of whole-slide images or GeoTIFF "
            "scenes, or a CSV whose first column is their path."
        )
    clashes = [name for name, n in Counter(i.name for i in items).items() if n > 1]
    if clashes:
        raise DomainSSLError(
            f"Several inputs of {data} share a name ({', '.join(sorted(clashes)[:5])}): their "
            "outputs would overwrite each other. Rename them, or embed them in separate runs."
        )
    return items
