"""The run's stain normalization: fitted once on a reference image or the data set, cached."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from domainssl.config import DataConfig
from domainssl.data.folder import to_tensor
from domainssl.data.imageio import read_image
from domainssl.errors import DomainSSLError
from domainssl.io import atomic_write_text
from domainssl.views.stain import PixelStainNormalization, StainNormalizer, fit_stain_normalizer

CACHE = "stain_norm.json"


class StainSetup:
    """Given the pretraining data set, the configured stain normalization (or None).

    The fitted normalizer is cached in ``run_dir/stain_norm.json``, so a resumed run and
    every DDP process use the same one; :attr:`state` is what the export records.
    """

    def __init__(self, config: DataConfig, run_dir: Path) -> None:
        self.config, self.cache = config, run_dir / CACHE
        self.state: dict | None = None
        reference = config.stain_reference
        if config.stain_norm != "none" and reference and not Path(reference).is_file():
            raise DomainSSLError(
                f"data.stain_reference {reference} does not exist: give an RGB image file "
                "(PNG, JPEG or TIFF) of well-stained tissue."
            )

    def __call__(self, dataset: Dataset) -> PixelStainNormalization | None:
        if self.config.stain_norm == "none":
            return None
        fitted_on = self.config.stain_reference or "the data set"
        if self.cache.is_file():
            cached = json.loads(self.cache.read_text())
            if (cached["method"], cached["fitted_on"]) == (self.config.stain_norm, fitted_on):
                self.state = cached
        if self.state is None:
            self.state = {**self._fit(dataset).state(), "fitted_on": fitted_on}
            atomic_write_text(self.cache, json.dumps(self.state, indent=2))
        return PixelStainNormalization(self.state)

    def _fit(self, dataset: Dataset) -> StainNormalizer:
        if self.config.stain_reference is not None:
            images, what = self._reference(Path(self.config.stain_reference)), "the reference"
        else:
            count = min(self.config.stain_fit_samples, len(dataset))  # type: ignore[arg-type]
            step = len(dataset) / count  # type: ignore[arg-type]
            images = torch.stack([dataset[int(i * step)]["image"] for i in range(count)])
            what = "the data set's patches"
        if images.shape[1] != 3:
            raise DomainSSLError(
                f"data.stain_norm needs RGB images; {what} have {images.shape[1]} bands."
            )
        try:
            return fit_stain_normalizer(self.config.stain_norm, images.float() / 255.0)
        except ValueError as error:
            raise DomainSSLError(
                f"Cannot fit {self.config.stain_norm} stain normalization on {what}: {error}. "
                "Give a tissue-rich patch as data.stain_reference."
            ) from error

    @staticmethod
    def _reference(path: Path) -> torch.Tensor:
        return to_tensor(read_image(path).array)[None]
