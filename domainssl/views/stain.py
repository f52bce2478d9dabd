"""Stain operations for H&E pathology on RGB batches in [0, 1] (pathology views only).

Colour deconvolution after Ruifrok & Johnston (2001): optical density OD = -log(I) is a
linear mix of stain vectors. HED jitter (Tellez et al. 2018) perturbs each stain's
concentration; Macenko et al. (2009) and Reinhard et al. (2001) normalize stain colour.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from kornia.color import lab_to_rgb, rgb_to_lab

# Rows: haematoxylin, eosin, DAB optical-density directions (scikit-image's rgb_from_hed,
# Ruifrok & Johnston 2001, as scikit-image uses them: not renormalized).
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
SKIMAGE_STAIN_UNIT = -math.log(1e-6)
"""Natural-log optical density per stain unit of scikit-image >= 0.18's ``rgb2hed`` /
``hed2rgb`` (they divide the OD by ln(1e6) ~ 13.8; before 0.18, ``rgb2hed`` returned the
natural-log OD itself)."""
MIN_INTENSITY = 1 / 255  # darker than one 8-bit step is noise, not stain (OD capped at 5.5)
QUANTILE_SAMPLES = 4_000_000
"""Values a percentile is estimated from: torch.quantile refuses inputs over 16M elements,
so larger references (slide regions) are subsampled at random (a fixed seed; not a stride,
which would alias with the width of patches laid side by side)."""


def bounded_quantile(values: torch.Tensor, q: float | list[float]) -> torch.Tensor:
    """``torch.quantile`` along the last dim of ``values``, on their device and dtype, from
    at most :data:`QUANTILE_SAMPLES` values per row."""
    if values.shape[-1] > QUANTILE_SAMPLES:
        generator = torch.Generator(device=values.device).manual_seed(0)
        picks = torch.randint(
            values.shape[-1], (QUANTILE_SAMPLES,), generator=generator, device=values.device
        )
        values = values[..., picks]
    q_tensor = torch.as_tensor(q, dtype=values.dtype, device=values.device)
    return torch.quantile(values, q_tensor, dim=-1)


def rgb_to_od(images: torch.Tensor) -> torch.Tensor:
    """Optical density of (B, 3, H, W) RGB in [0, 1]."""
    return -torch.log(images.clamp(min=MIN_INTENSITY))


def od_to_rgb(od: torch.Tensor) -> torch.Tensor:
    return torch.exp(-od).clamp(0, 1)


def hed_jitter(images: torch.Tensor, sigma: float, bias: float) -> torch.Tensor:
    """Tellez et al. (2018): per-image, per-stain ``c * U(1-sigma, 1+sigma) + U(-bias, bias)``
    on the stain concentrations ``c`` of scikit-image's ``rgb2hed``.

    Args:
        images: (B, 3, H, W) RGB in [0, 1].
        sigma: multiplicative strength (unit-free; Tellez's "HED-light": 0.05).
        bias: additive strength in scikit-image >= 0.18 stain units (what ``rgb2hed``
            returns today). Tellez et al.'s 0.05 was computed with an older scikit-image
            whose units were natural-log OD: 0.05 / ln(1e6) ~ 0.0036 in today's units.
    """
    b, shape = images.shape[0], (images.shape[0], 1, 1, 3)
    scale = 1 + (torch.rand(shape, device=images.device) * 2 - 1) * sigma
    shift = (torch.rand(shape, device=images.device) * 2 - 1) * bias
    return perturb_stains(images, scale.view(b, 3), shift.view(b, 3))


def perturb_stains(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Images whose stain concentrations (scikit-image units) become ``c * scale + shift``,
    per image and stain: what ``hed2rgb(rgb2hed(x) * scale + shift)`` gives where the
    concentrations are not negative (``rgb2hed`` clips them at 0; this keeps them).

    Args:
        images: (B, 3, H, W) RGB in [0, 1].
        scale: (B, 3) factor per haematoxylin, eosin, DAB.
        shift: (B, 3) addition, in scikit-image stain units.
    """
    matrix = RGB_FROM_HED.to(images.device, images.dtype)  # (3 stains, 3 rgb)
    od = rgb_to_od(images).permute(0, 2, 3, 1)  # (B, H, W, 3)
    concentrations = od @ torch.linalg.inv(matrix)  # (B, H, W, 3 stains), natural-log OD
    scale, shift = scale[:, None, None].to(images.dtype), shift[:, None, None].to(images.dtype)
    change = (concentrations * (scale - 1) + shift * SKIMAGE_STAIN_UNIT) @ matrix  # OD change
    # I * exp(-change) equals exp(-new OD) above the OD floor and keeps zero strength exact
    return (images * torch.exp(-change.permute(0, 3, 1, 2))).clamp(0, 1)


def macenko_stains(image: torch.Tensor, beta: float = 0.15, alpha: float = 1.0) -> torch.Tensor:
    """Stain vectors (2, 3) of one RGB image (3, H, W) in [0, 1], H first (Macenko 2009).

    Args:
        image: one RGB image in [0, 1].
        beta: pixels whose OD norm is below this count as background. (Macenko thresholds
            every channel, which drops nearly pure eosin pixels: eosin hardly absorbs red.)
        alpha: percentile (in %) of the extreme angles taken as the pure stains.
    """
    od = rgb_to_od(image).reshape(3, -1).T.double()  # (N, 3)
    od = od[od.norm(dim=1) > beta]
    if len(od) < 10:
        raise ValueError("too few stained pixels to estimate stain vectors (is it background?)")
    _, vectors = torch.linalg.eigh(torch.cov(od.T))
    plane = vectors[:, 1:]  # the two largest eigenvectors, (3, 2)
    projected = od @ plane
    angles = torch.atan2(projected[:, 1], projected[:, 0])
    low, high = bounded_quantile(angles, [alpha / 100, 1 - alpha / 100])
    stains = torch.stack(
        [plane @ torch.stack([low.cos(), low.sin()]), plane @ torch.stack([high.cos(), high.sin()])]
    )
    stains = stains * torch.where(stains.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    if stains[0, 0] < stains[1, 0]:  # haematoxylin absorbs more red than eosin does
        stains = stains.flip(0)
    return (stains / stains.norm(dim=1, keepdim=True)).float()


def macenko_concentrations(image: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
    """Least-squares stain concentrations (2, H*W) of an image for given stain vectors."""
    od = rgb_to_od(image).reshape(3, -1).double()  # (3, N)
    return torch.linalg.lstsq(stains.double().T, od).solution  # (2, N)


class MacenkoNormalizer:
    """Map every image's stains and concentration range onto a reference's."""

    def __init__(self, stains: torch.Tensor, max_concentrations: torch.Tensor) -> None:
        self.stains, self.max_concentrations = stains, max_concentrations

    @classmethod
    def fit(cls, reference: torch.Tensor) -> MacenkoNormalizer:
        """Fit on one reference RGB image (3, H, W) in [0, 1]."""
        stains = macenko_stains(reference)
        concentrations = macenko_concentrations(reference, stains)
        return cls(stains, bounded_quantile(concentrations, 0.99).float())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalize a (B, 3, H, W) batch; images without enough stain are left as they are."""
        out = images.clone()
        for i, image in enumerate(images):
            try:
                stains = macenko_stains(image)
            except ValueError:
                continue
            concentrations = macenko_concentrations(image, stains)
            peaks = self.max_concentrations.to(concentrations)
            scale = peaks / bounded_quantile(concentrations, 0.99)
            concentrations = (concentrations * scale[:, None]).clamp(min=0)  # no negative stain
            od = self.stains.to(concentrations).T @ concentrations  # (3, N)
            out[i] = od_to_rgb(od.reshape(image.shape)).to(images.dtype)
        return out

    def state(self) -> dict[str, Any]:
        return {
            "method": "macenko",
            "stains": self.stains.tolist(),
            "max_concentrations": self.max_concentrations.tolist(),
        }


class ReinhardNormalizer:
    """Match each image's per-channel LAB mean and std to a reference's (Reinhard 2001)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean, std  # (3,) each, LAB

    @classmethod
    def fit(cls, reference: torch.Tensor) -> ReinhardNormalizer:
        lab = rgb_to_lab(reference[None])[0].reshape(3, -1)
        return cls(lab.mean(dim=1), lab.std(dim=1))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        lab = rgb_to_lab(images)
        mean = lab.mean(dim=(2, 3), keepdim=True)
        std = lab.std(dim=(2, 3), keepdim=True).clamp(min=1e-6)
        target_mean = self.mean.to(images)[None, :, None, None]
        target_std = self.std.to(images)[None, :, None, None]
        return lab_to_rgb((lab - mean) / std * target_std + target_mean).clamp(0, 1)

    def state(self) -> dict[str, Any]:
        return {"method": "reinhard", "mean": self.mean.tolist(), "std": self.std.tolist()}


StainNormalizer = MacenkoNormalizer | ReinhardNormalizer
NORMALIZERS: dict[str, type[MacenkoNormalizer] | type[ReinhardNormalizer]] = {
    "macenko": MacenkoNormalizer,
    "reinhard": ReinhardNormalizer,
}


def fit_stain_normalizer(method: str, images: torch.Tensor) -> StainNormalizer:
    """Fit ``method`` on RGB images (N, 3, H, W) in [0, 1], taken together as one reference.

    With several tissue patches of a data set this gives the data set's stain; with one
    patch, that patch's. Raises ``ValueError`` when the images hold too little stain.
    """
    reference = torch.cat(list(images), dim=2)  # (3, H, N * W): the patches side by side
    return NORMALIZERS[method].fit(reference)


def stain_normalizer_from_state(state: dict[str, Any]) -> StainNormalizer:
    """Rebuild a normalizer from its ``state()`` (as stored in an export)."""
    if state["method"] == "macenko":
        stains, peaks = state["stains"], state["max_concentrations"]
        return MacenkoNormalizer(torch.tensor(stains), torch.tensor(peaks))
    return ReinhardNormalizer(torch.tensor(state["mean"]), torch.tensor(state["std"]))


class PixelStainNormalization:
    """Stain normalization of 8-bit-range RGB (B, 3, H, W) (uint8 or float 0..255) to float.

    ``state`` is the normalizer's :meth:`state` plus ``fitted_on`` (what it was fitted on).
    """

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.normalizer = stain_normalizer_from_state(state)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalizer(images.float() / 255.0) * 255.0

    def __repr__(self) -> str:
        return f"{self.state['method']} stain normalization fitted on {self.state['fitted_on']}"
