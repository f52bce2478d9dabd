"""The first convolution of pretrained weights adapted to the data's bands.

``mean_repeat``: every band gets the mean filter of the weights' bands, rescaled by
(weights' bands / data bands). ``by_name``: a data band whose name matches a weights' band
(same band number, or the same colour through a small alias table) takes that band's
filter; the others get the rescaled mean filter as with ``mean_repeat``.
"""

from __future__ import annotations

import re

import torch

COLOUR_ALIASES = {
    "red": ("red", "r", "b04", "sr_b4"),  # Sentinel-2 B04, Landsat 8/9 Collection-2 SR_B4
    "green": ("green", "g", "b03", "sr_b3"),
    "blue": ("blue", "b", "b02", "sr_b2"),
    "nir": ("nir", "b08", "sr_b5"),
}
"""Colour of a band name, where the name says it unambiguously (plain Landsat 'B4' does not:
red on OLI, near infrared on TM/ETM+)."""
BAND_NUMBER = re.compile(r"^b0*(\d+)(a?)$")


def band_keys(name: str) -> tuple[str | None, str | None]:
    """(band number key such as ``b8a``, colour) of a band name; None where unknown."""
    lower = name.strip().lower()
    number = BAND_NUMBER.match(lower)
    colour = next((c for c, aliases in COLOUR_ALIASES.items() if lower in aliases), None)
    return (f"b{number.group(1)}{number.group(2)}" if number else None), colour


def match_bands(data: list[str], weights: list[str]) -> dict[str, str | None]:
    """For each data band, the weights' band it takes its filter from (None: the mean)."""
    keyed = [band_keys(name) for name in weights]
    mapping: dict[str, str | None] = {}
    for name in data:
        number, colour = band_keys(name)
        found = next(
            (w for w, (n, _) in zip(weights, keyed, strict=True) if number and n == number), None
        )
        if found is None and colour is not None:
            found = next((w for w, (_, c) in zip(weights, keyed, strict=True) if c == colour), None)
        mapping[name] = found
    return mapping


def mean_filter(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """The mean filter (O, 1, k, k) over the weights' bands, rescaled by C / ``in_chans`` so
    that the layer's response to an input of equal bands keeps its magnitude."""
    return weight.mean(dim=1, keepdim=True) * (weight.shape[1] / in_chans)


def mean_repeat(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """First-conv weights (O, C, k, k) for ``in_chans`` bands, each the rescaled mean."""
    return mean_filter(weight, in_chans).repeat(1, in_chans, 1, 1)


def by_name(
    weight: torch.Tensor, data: list[str], weights: list[str]
) -> tuple[torch.Tensor, dict[str, str | None]]:
    """First-conv weights for the ``data`` bands from those of the ``weights`` bands, and
    the mapping used (data band -> weights' band, None for the rescaled mean filter)."""
    mapping = match_bands(data, weights)
    mean = mean_filter(weight, len(data))[:, 0]  # (O, k, k)
    columns = [weight[:, weights.index(source)] if source else mean for source in mapping.values()]
    return torch.stack(columns, dim=1), mapping
