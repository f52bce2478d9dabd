"""`domainssl views`: original samples next to their random views, as one PNG."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from domainssl.commands.common import ConfigFile, Data, Domain, Method, Sets, user_errors
from domainssl.config import load_config


@user_errors
def views(
    domain: Domain = "eo",
    method: Method = None,
    config: ConfigFile = None,
    data: Data = None,
    set_: Sets = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("views.png"),
    samples: Annotated[int, typer.Option(help="Rows: samples shown.")] = 8,
    count: Annotated[int, typer.Option(help="Columns: views per sample.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    crops: Annotated[
        str | None, typer.Option(help="random, object_aware or scene_object (views.crops).")
    ] = None,
) -> None:
    """Render original samples next to random views, to see what training ignores.

    With object-aware crops, views come in pairs around one proposal box per sample,
    drawn on the original.
    """
    import torch

    import domainssl.methods  # noqa: F401  (registers the methods and view presets)
    from domainssl.data.datamodule import prepare_pretrain_data
    from domainssl.data.proposal_cache import random_box
    from domainssl.data.stain_setup import StainSetup
    from domainssl.views.object_crops import draw_boxes
    from domainssl.views.presets import Standardize, build_views, view_pair
    from domainssl.views.proposals import ProposalSettings, propose
    from domainssl.views.render import save_view_grid
    from domainssl.views.settings import CropViewsConfig

    overrides = {"data.path": data, "views.crops": crops}
    run_config = load_config(domain, method, config, overrides, set_)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        stain = StainSetup(run_config.data, Path(tmp))
        prepared = prepare_pretrain_data(run_config.data, domain, Path(tmp), seed, stain)
    picks = torch.randperm(len(prepared.dataset))[:samples].tolist()  # type: ignore[arg-type]
    raw = torch.stack([prepared.dataset[i]["image"] for i in picks]).float()
    pipeline = build_views(run_config.views, prepared.stats.mean, prepared.stats.std)
    originals = Standardize(prepared.stats.mean, prepared.stats.std)(raw)
    boxes = None
    crop_views = run_config.views
    if isinstance(crop_views, CropViewsConfig) and crop_views.crops != "random":
        settings = ProposalSettings.from_views(crop_views)
        boxes = torch.stack([random_box(propose(image, settings)) for image in raw])
        originals = draw_boxes(originals, boxes)
    pairs = [view_pair(pipeline, raw, boxes) for _ in range(0, count, 2)]
    augmented = [view for pair in pairs for view in pair][:count]
    save_view_grid(originals, augmented, prepared.band_names, out)
    typer.echo(f"Wrote {out}: {len(picks)} samples (rows), original + {count} views each.")
