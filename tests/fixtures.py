"""Seeded generators of tiny real-layout fixtures: GeoTIFF/JPEG chip folders and scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from PIL import Image
from rasterio.transform import from_origin

from domainssl.views.stain import od_to_rgb


def write_geotiff(path: Path, array: np.ndarray, nodata: float | None = None) -> Path:
    """Write a (C, H, W) array as a georeferenced GeoTIFF (EPSG:32632, 10 m)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = array.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=array.dtype,
        crs="EPSG:32632",
        transform=from_origin(500000, 5000000, 10, 10),
        nodata=nodata,
    ) as dst:
        dst.write(array)
    return path


def class_pattern(rng: np.random.Generator, label: int, bands: int, size: int) -> np.ndarray:
    """A chip whose band means and texture depend on its class (separable but noisy)."""
    base = rng.normal(0, 1, (bands, size, size))
    stripes = np.sin(np.arange(size) * (label + 1) * 0.6)[None, None, :]
    return base * 10 + 60 * (label + 1) + 30 * stripes


def write_chip_folder(
    root: Path,
    classes: int = 2,
    per_class: int = 6,
    bands: int = 4,
    size: int = 32,
    seed: int = 0,
    fmt: str = "tif",
) -> Path:
    """``root/class_k/chip_i.<fmt>``: GeoTIFF (uint16, any bands) or JPEG (RGB)."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        for i in range(per_class):
            chip = class_pattern(rng, label, bands if fmt == "tif" else 3, size)
            path = root / f"class_{label}" / f"chip_{i}.{fmt}"
            if fmt == "tif":
                write_geotiff(path, chip.clip(0, 65535).astype(np.uint16))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(chip.clip(0, 255).astype(np.uint8).transpose(1, 2, 0)).save(path)
    return root


def write_scene(
    path: Path,
    bands: int = 4,
    height: int = 200,
    width: int = 160,
    nodata_rows: int = 0,
    seed: int = 0,
) -> Path:
    """A uint16 scene; its first ``nodata_rows`` rows are nodata (0)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(100, 4000, (bands, height, width)).astype(np.uint16)
    array[:, :nodata_rows] = 0
    return write_geotiff(path, array, nodata=0)


TISSUE_RGB = (190, 90, 170)  # H&E-like pink-purple
GLASS_RGB = (242, 242, 242)


def write_slide(
    path: Path,
    width: int = 2048,
    height: int = 1536,
    mpp: float | None = 0.25,
    tissue: list[tuple[int, int, int, int]] | None = None,
    seed: int = 0,
    gradient: bool = False,
) -> Path:
    """A 3-level pyramidal tiled TIFF (generic-tiff for OpenSlide) with resolution tags.

    ``tissue`` boxes (x0, y0, x1, y1) in level-0 pixels are stained; the rest is glass.
    ``gradient``: the stain's red and green vary with x and y, so every place differs.
    """
    import tifffile

    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GLASS_RGB
    for x0, y0, x1, y1 in tissue or []:
        image[y0:y1, x0:x1] = TISSUE_RGB
        if gradient:
            ys, xs = np.mgrid[y0:y1, x0:x1]
            image[y0:y1, x0:x1, 0] = 120 + 120 * xs // width
            image[y0:y1, x0:x1, 1] = 40 + 100 * ys // height
    noise = rng.integers(-6, 7, image.shape)
    image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        for level in range(3):
            step = 2**level
            per_cm = 1e4 / (mpp * step) if mpp is not None else None
            tif.write(
                image[::step, ::step],
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                subfiletype=0 if level == 0 else 1,
                resolution=(per_cm, per_cm) if per_cm else None,
                resolutionunit="CENTIMETER" if per_cm else None,
            )
    return path


def write_segmentation_folder(
    root: Path,
    count: int = 6,
    size: int = 64,
    bands: int = 3,
    mask_fmt: str = "png",
    seed: int = 0,
) -> Path:
    """``root/images/img_i.tif`` (uint16, noisy background) + ``root/masks/img_i.<mask_fmt>``:
    a bright square of random size and place is class 1, stored as 0/255."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        side = int(rng.integers(size // 4, size // 2))
        top, left = rng.integers(0, size - side, 2)
        mask = np.zeros((size, size), np.uint8)
        mask[top : top + side, left : left + side] = 255
        image = rng.normal(1000, 150, (bands, size, size)) + 1500 * (mask > 0)
        write_geotiff(root / "images" / f"img_{i}.tif", image.clip(0, 65535).astype(np.uint16))
        mask_path = root / "masks" / f"img_{i}.{mask_fmt}"
        if mask_fmt == "tif":
            write_geotiff(mask_path, mask[None])
        else:
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(mask_path)
    return root


def write_infer_models(root: Path, classes: int = 3) -> dict[str, Path]:
    """Random-weight model folders on one 3-band resnet10t (32 px) as `domainssl pretrain` /
    `transfer` write them: ``embed`` (a pretrain run), ``segment``, ``constant`` (a segmenter
    predicting class 1 everywhere) and ``classify`` (a linear head)."""
    import json
    from dataclasses import asdict

    import torch
    from safetensors.torch import save_file
    from torch import nn

    from domainssl.export import BackboneMeta, export_backbone
    from domainssl.models.backbones import create_backbone
    from domainssl.transfer.classification.model import Classifier
    from domainssl.transfer.segmentation.model import build_segmenter

    meta = BackboneMeta(
        "resnet10t", True, 3, ["B1", "B2", "B3"], [1000.0] * 3, [500.0] * 3, 512, 32,
        "simclr", "eo", "x", {},
    )  # fmt: skip

    def save(folder: Path, model: nn.Module, info: dict) -> Path:
        folder.mkdir(parents=True)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        (folder / "model.json").write_text(json.dumps({**info, "backbone": asdict(meta)}))
        return folder

    torch.manual_seed(0)
    export_backbone(create_backbone("resnet10t", 3, True), meta, root / "pretrain")
    segment = {"task": "segment", "num_classes": classes, "tile": 32}
    constant = build_segmenter(meta, classes, None)
    nn.init.zeros_(constant.head.weight)
    constant.head.bias = nn.Parameter(torch.arange(classes) % 2 * 2.0)  # class 1 wins
    head = nn.Linear(meta.feature_dim, classes)
    classifier = Classifier(create_backbone("resnet10t", 3, True), head, multilabel=False)
    names = [f"class_{k}" for k in range(classes)]
    classify = {
        "task": "classify",
        "classes": names,
        "multilabel": False,
        "head": {"kind": "linear"},
    }
    return {
        "embed": root / "pretrain",
        "segment": save(root / "segment", build_segmenter(meta, classes, None), segment),
        "constant": save(root / "constant", constant, segment),
        "classify": save(root / "classify", classifier, classify),
    }


H_STAIN = F.normalize(torch.tensor([0.65, 0.70, 0.29]), dim=0)
E_STAIN = F.normalize(torch.tensor([0.07, 0.99, 0.11]), dim=0)


def constructed_image(seed: int = 0, size: int = 48) -> torch.Tensor:
    """RGB from known stains: haematoxylin and eosin concentrations over white background."""
    generator = torch.Generator().manual_seed(seed)
    concentrations = torch.rand(2, size * size, generator=generator) * torch.tensor([[1.2], [0.8]])
    concentrations[:, : size * 4] = 0.0  # some background
    od = torch.stack([H_STAIN, E_STAIN]).T @ concentrations  # (3, N)
    return od_to_rgb(od.reshape(3, size, size))


def write_hf_cache(home: Path, repo: str = "org/tiny", architecture: str = "resnet10t") -> Path:
    """A local Hugging Face cache (``HF_HOME``) holding a timm model the way the hub stores
    it: ``hub/models--org--name/snapshots/<rev>/model.safetensors`` + ``config.json``, with
    ``refs/main`` naming the revision. Returns the weights file."""
    import timm
    from safetensors.torch import save_file

    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123456789abcdef")
    torch.manual_seed(0)
    model = timm.create_model(architecture, num_classes=10)
    weights = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    classifier = dict(model.pretrained_cfg)["classifier"]  # type: ignore[arg-type]
    cfg = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 10,
           "input_size": [3, 224, 224], "classifier": classifier}  # fmt: skip
    config = {"architecture": architecture, "num_classes": 10, "pretrained_cfg": cfg}
    (snapshot / "config.json").write_text(json.dumps(config))
    return weights
