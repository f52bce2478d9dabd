"""One whole slide -> ``<name>.h5`` in the CLAM / TRIDENT layout: dataset ``features`` (N, D)
and dataset ``coords`` (N, 2; level-0 x, y of each patch's top-left corner), written batch
by batch (memory flat in slide size), plus optionally the tissue contours as QuPath GeoJSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader

import domainssl
from domainssl.data.pathology import THUMBNAIL_SIDE, SlideGrid, SlidePatches, best_level
from domainssl.data.tissue import tissue_mask
from domainssl.embed.compute import Compute
from domainssl.infer.runner import TileRunner
from domainssl.infer.wsi.infer import read_resolution, tissue_grid
from domainssl.io import staged


@dataclass(frozen=True)
class SlideSettings:
    """How slides are cut into patches and stored."""

    mpp: float | None
    """µm/px to read patches at (None: the resolution recorded at pretraining)."""
    slide_mpp: float | None
    """Level-0 µm/px for slides that record none."""
    tissue_threshold: float
    dtype: str
    """``float32`` or ``float16`` features."""
    tissue_geojson: bool


def slide_outputs(out_dir: Path, name: str, settings: SlideSettings) -> list[Path]:
    """The files one slide's embedding consists of."""
    return [out_dir / f"{name}.h5"] + (
        [out_dir / f"{name}_tissue.geojson"] if settings.tissue_geojson else []
    )


def tissue_settings(grid: SlideGrid) -> dict[str, object]:
    """How the tissue patches were found."""
    return {
        "tissue_threshold": grid.tissue_threshold,
        "detection": "Otsu threshold on the saturation of a thumbnail",
        "thumbnail_side": THUMBNAIL_SIDE,
    }


def _write_h5(path: Path, grid: SlideGrid, runner: TileRunner, loader: DataLoader,
              settings: SlideSettings, level: int, encoder: str) -> int:  # fmt: skip
    """Stream the features of every grid patch into ``path``; the patch count."""
    dimension = runner.meta.feature_dim
    with h5py.File(path, "w") as file:
        features = file.create_dataset(
            "features", (0, dimension), settings.dtype, maxshape=(None, dimension),
            chunks=(256, dimension),
        )  # fmt: skip
        count = 0
        for batch in loader:
            images = batch["image"]  # (B, 3, P, P) uint8
            valid = torch.ones(len(images), 1, dtype=torch.bool)
            vectors = np.stack([v for v in runner(images, valid)
                                if v is not None])  # fmt: skip
            features.resize(count + len(vectors), axis=0)
            features[count:] = vectors.astype(settings.dtype)
            count += len(vectors)
        coords = file.create_dataset("coords", data=np.array(grid.coords, dtype=np.int64))
        coords.attrs.update(
            patch_size=grid.level0_size, patch_level=level, mpp=grid.mpp,
            patch_size_target=grid.patch_size, slide_mpp=grid.slide_mpp,
        )  # fmt: skip
        file.attrs.update(
            encoder=encoder,
            encoder_meta=json.dumps(runner.meta.__dict__),
            tissue=json.dumps(tissue_settings(grid)),
            slide=grid.path,
            settings=json.dumps(asdict(settings)),
            precision=runner.precision,
            domainssl_version=domainssl.__version__,
        )
    return count


def tissue_features(slide: openslide.OpenSlide) -> list[dict]:
    """The tissue of ``slide`` as QuPath annotations: one polygon (with holes) per region,
    in level-0 pixels."""
    thumbnail = np.asarray(slide.get_thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE)).convert("RGB"))
    mask = tissue_mask(thumbnail).astype(np.uint8)
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    width, height = slide.dimensions
    scale = np.array([width / mask.shape[1], height / mask.shape[0]])

    def ring(contour: np.ndarray) -> list[list[float]]:
        points = (contour[:, 0, :] * scale).round(1).tolist()
        return [*points, points[0]]

    features = []
    for index, contour in enumerate(contours):
        if hierarchy[0][index][3] != -1 or len(contour) < 3:
            continue  # a hole (added to its parent below) or a degenerate outline
        rings, child = [ring(contour)], hierarchy[0][index][2]
        while child != -1:
            if len(contours[child]) >= 3:
                rings.append(ring(contours[child]))
            child = hierarchy[0][child][0]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation",
                           "classification": {"name": "Tissue", "color": [0, 160, 0]}},
        })  # fmt: skip
    return features


def embed_slide(source: Path, out_dir: Path, name: str, runner: TileRunner, model_dir: Path,
                encoder: str, settings: SlideSettings, compute: Compute) -> int:  # fmt: skip
    """Embed every tissue patch of ``source`` into ``<name>.h5`` (and the tissue GeoJSON);
    outputs appear under their final names only when complete. Returns the patch count."""
    meta = runner.meta
    mpp = read_resolution(meta, model_dir, settings.mpp)
    grid = tissue_grid(source, compute.tile or meta.input_size, mpp, settings.tissue_threshold,
                       settings.slide_mpp)  # fmt: skip
    with openslide.OpenSlide(str(source)) as slide:
        level = best_level(slide, grid.level0_size / grid.patch_size)
        tissue = tissue_features(slide) if settings.tissue_geojson else []
    loader = DataLoader(
        SlidePatches([grid], 0, random=False), batch_size=compute.batch_size,
        num_workers=compute.num_workers, pin_memory=runner.device.type == "cuda",
    )  # fmt: skip
    with staged(slide_outputs(out_dir, name, settings)) as temps:
        count = _write_h5(temps[0], grid, runner, loader, settings, level, encoder)
        if settings.tissue_geojson:
            collection = {"type": "FeatureCollection", "features": tissue}
            temps[1].write_text(json.dumps(collection))
    return count
