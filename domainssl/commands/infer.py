"""`domainssl infer`: a model over a large GeoTIFF or the tissue of a whole slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from domainssl.commands.common import (
    PRECISION_HELP,
    check_tiling,
    inference_precision,
    pick_device,
    user_errors,
)
from domainssl.errors import DomainSSLError

CPU_BATCH = 4
"""Tiles per batch on the CPU: as fast as 16, with about half the peak memory (bench/results.md,
`infer-memory-trace`)."""


@user_errors
def infer(
    model_dir: Annotated[
        Path, typer.Argument(help="A `domainssl transfer` output or a pretrain run (embeddings).")
    ],
    source: Annotated[Path, typer.Argument(help="GeoTIFF scene or whole slide, any size.")],
    out: Annotated[Path, typer.Option(help="Output GeoTIFF / heatmap TIFF.")] = Path(
        "prediction.tif"
    ),
    tile: Annotated[
        int | None, typer.Option(help="Tile size (px); default from the model.")
    ] = None,
    overlap: Annotated[
        int | None, typer.Option(help="Tile overlap (px); default tile/4 for segmentation.")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Tiles per batch; default 16 on a GPU, 4 on the CPU (as fast there)."),
    ] = None,
    probabilities: Annotated[
        bool, typer.Option(help="Write per-class probabilities instead of labels.")
    ] = False,
    cog: Annotated[bool, typer.Option(help="Write a cloud-optimized GeoTIFF.")] = False,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "auto",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "32-true",
    num_workers: Annotated[int, typer.Option(help="Tile reader processes.")] = 2,
    devices: Annotated[
        int,
        typer.Option(
            help="GeoTIFF: processes the rows are split across, a GPU (or CPU share) each."
        ),
    ] = 1,
    resume: Annotated[
        bool, typer.Option(help="GeoTIFF: go on from the rows an interrupted run left on disk.")
    ] = False,
    mpp: Annotated[
        float | None, typer.Option(help="Slide: µm/px to read tiles at; default the model's.")
    ] = None,
    tissue_threshold: Annotated[
        float, typer.Option(help="Slide: tissue share a tile needs to run.")
    ] = 0.5,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Slide: level-0 µm/px when the slide records none.")
    ] = None,
) -> None:
    """Run a model over a large GeoTIFF (a georeferenced GeoTIFF) or the tissue of a whole
    slide (a pyramidal heatmap TIFF + per-tile CSV / GeoJSON + thumbnail), tile by tile."""
    from domainssl.infer.geotiff.infer import infer_geotiff
    from domainssl.infer.wsi.infer import infer_slide, is_slide_source
    from domainssl.models.parallel import require_devices

    device = pick_device(accelerator)
    inference_precision(precision, device)
    if device == "cuda" or devices < 1:
        require_devices(devices)
    check_tiling(tile=tile, batch_size=batch_size, num_workers=num_workers, mpp=mpp,
                 slide_mpp=slide_mpp, tissue_threshold=tissue_threshold)  # fmt: skip
    batch_size = batch_size or (16 if device == "cuda" else CPU_BATCH)
    slide = is_slide_source(source)
    if slide and (overlap or probabilities or cog or resume or devices > 1):
        raise DomainSSLError(
            f"{source} is a whole slide: --overlap, --probabilities, --cog, --resume and "
            "--devices apply to GeoTIFFs only (the CSV holds every class probability)."
        )
    try:
        summary = (
            infer_slide(
                model_dir, source, out, tile, batch_size, device, num_workers, precision,
                progress=True, mpp=mpp, tissue_threshold=tissue_threshold, slide_mpp=slide_mpp,
            )
            if slide
            else infer_geotiff(
                model_dir, source, out, tile, overlap, batch_size, probabilities, device,
                num_workers, precision, cog, progress=True, resume=resume, devices=devices,
            )
        )  # fmt: skip
    except KeyboardInterrupt:
        hint = "" if slide else "; rerun with --resume to go on"
        typer.echo(f"Interrupted: nothing written to {out}{hint}.")
        raise typer.Exit(130) from None
    outputs = ", ".join(map(str, summary.outputs))
    typer.echo(
        f"{summary.task}: {summary.tiles_run} tiles in {summary.seconds:.1f} s "
        f"({summary.megapixels_per_second:.2f} Mpx/s); wrote {outputs}"
    )
