"""ORL's ``method`` section (BYOL's keys, which stages 1 and 3 train with, and those of the
three stages) and the crop views it needs."""

from __future__ import annotations

from domainssl.config import RunConfig
from domainssl.errors import DomainSSLError
from domainssl.methods.byol import BYOLConfig
from domainssl.views.settings import CropViewsConfig


class ORLConfig(BYOLConfig):
    """BYOL's keys (stages 1 and 3) and those of the three stages."""

    name: str = "orl"
    orl_init: str | None = None
    """An existing pretrain run folder used as stage 1 (then stage 1 is skipped)."""
    orl_stage_shares: tuple[float, float, float] = (0.4, 0.2, 0.4)
    """Shares of ``trainer.max_time`` for stages 1, 2 and 3 (unused time moves on)."""
    orl_neighbors: int = 10
    """Stage 2: nearest images (cosine) retrieved per image (Xie et al. 2021: 10)."""
    orl_top_fraction: float = 0.1
    """Stage 2: share of RoI-RoI pairs kept per image-neighbour pair (Xie et al.: 10%)."""
    orl_mine_images: int | None = None
    """Stage 2: mine pairs among this many randomly chosen images (None = all)."""
    orl_jitter_iou: float = 0.5
    """Stage 3: the intra-image RoI pair are two jitters of a box with IoU above this."""
    orl_loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Stage 3: weights of the global, intra-image RoI and inter-image RoI losses."""


def crop_views(config: RunConfig) -> CropViewsConfig:
    """The run's views, which ORL needs to crop object boxes."""
    if not isinstance(config.views, CropViewsConfig):
        raise DomainSSLError(
            f"ORL crops object boxes, which the {config.views.preset} views do not do: "
            "use views.preset=eo or pathology."
        )
    return config.views
