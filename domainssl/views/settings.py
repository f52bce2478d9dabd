"""The ``views`` section of each view preset: only the keys its pipeline reads.

:mod:`domainssl.views.presets` registers each model with its pipeline.
"""

from __future__ import annotations

from typing import Literal

from domainssl.config import ViewsConfig


class CropViewsConfig(ViewsConfig):
    """Keys of the presets that cut random (or object-aware) resized crops."""

    crop_size: int = 32
    """Output side (px) of each view."""
    crop_scale: tuple[float, float] = (0.25, 1.0)
    """Area fraction range of the random resized crop."""
    crop_ratio: tuple[float, float] = (0.75, 1.333)
    flip_p: float = 0.5
    rot90: bool = True
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.0)
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


class EOViewsConfig(CropViewsConfig):
    """Earth observation views for any band count."""

    preset: Literal["eo"] = "eo"
    jitter_p: float = 0.8
    brightness: float = 0.4
    """Per-band additive shift, in units of that band's std."""
    contrast: float = 0.4
    """Per-band multiplicative factor range 1 ± contrast."""
    band_dropout_p: float = 0.0
    """Probability that each band is zeroed (at least one band is kept)."""
    noise_std: float = 0.05


class PathologyViewsConfig(CropViewsConfig):
    """H&E views on RGB."""

    preset: Literal["pathology"] = "pathology"
    hed_sigma: float = 0.05
    """Multiplicative HED stain jitter (Tellez et al. 2018 "HED-light": 0.05)."""
    hed_bias: float = 0.0036
    """Additive HED stain jitter in scikit-image >= 0.18 ``rgb2hed`` units. Tellez et al.'s
    0.05 was in older scikit-image's natural-log OD units: 0.05 / ln(1e6) ~ 0.0036 here."""


class ReidViewsConfig(ViewsConfig):
    """RGB-infrared person views (no crops: persons keep their whole shape)."""

    preset: Literal["reid"] = "reid"
    flip_p: float = 0.5
    channel_p: float = 0.3
    """Chance an RGB view becomes one random channel repeated to 3 (Ye et al. 2021)."""
    gray_p: float = 0.2
    """Chance an RGB view becomes 3-channel gray (bridges RGB and infrared)."""
    erase_p: float = 0.5
    """Chance of random erasing of a rectangle (Zhong et al. 2020)."""
