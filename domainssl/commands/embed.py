"""`domainssl embed`: features of a whole archive (slides -> h5, scenes -> embedding raster
+ GeoParquet, sharded across processes, GPUs and nodes) or of a folder of chips (Parquet)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from domainssl.commands.common import (
    PRECISION_HELP,
    check_tiling,
    inference_precision,
    pick_device,
    user_errors,
)
from domainssl.errors import DomainSSLError

CPU_READERS = 0
"""Reader processes on the CPU: the model already uses every core; on 2 cores reading in the
main process was 12% faster than 2 readers and kept the peak memory flat (`embed-speed`)."""

if TYPE_CHECKING:
    from domainssl.embed.archive import ArchiveRun


@user_errors
def embed(
    model: Annotated[
        str | None,
        typer.Argument(
            help="A pretrain run, a transfer output (its backbone) or pretrained weights as "
            "--init takes them (timm name, hf-hub:org/name, torchgeo:..., weight file)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Folder or CSV manifest of slides / GeoTIFF scenes, or a chip folder."),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(help="Output folder (archives); chips: a .parquet file or a folder."),
    ] = Path("embeddings"),
    fmt: Annotated[
        str, typer.Option("--format", help="Scenes: some of tif, parquet, zarr, comma-separated.")
    ] = "tif,parquet",
    dtype: Annotated[str, typer.Option(help="Slides: float32 or float16 features.")] = "float32",
    tissue_geojson: Annotated[
        bool, typer.Option(help="Slides: also write the tissue contours (QuPath GeoJSON).")
    ] = False,
    mpp: Annotated[
        float | None, typer.Option(help="Slides: µm/px to read patches at; default the model's.")
    ] = None,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Slides: level-0 µm/px where a slide records none.")
    ] = None,
    tissue_threshold: Annotated[
        float, typer.Option(help="Slides: tissue share a patch needs.")
    ] = 0.5,
    tile: Annotated[
        int | None, typer.Option(help="Patch / tile side (px); default the model's input size.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Default 64 on a GPU, 16 on CPU.")] = None,
    num_workers: Annotated[
        int | None,
        typer.Option(help="Reader processes per device; default 2 on a GPU, 0 on the CPU."),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(help="I/N: this process's share; default from torchrun / srun, else 0/1."),
    ] = None,
    devices: Annotated[
        int, typer.Option(help="Processes on this machine, one GPU (or CPU share) each.")
    ] = 1,
    merge: Annotated[
        Path | None,
        typer.Option(help="Only merge the manifest parts of this output folder, then stop."),
    ] = None,
    map_png: Annotated[
        Path | None, typer.Option("--map", help="Chips: also write a 2-D t-SNE map (PNG).")
    ] = None,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "auto",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "32-true",
) -> None:
    """Embed every tissue patch of each slide (h5, CLAM/TRIDENT layout), every tile of each
    GeoTIFF scene (embedding raster and GeoParquet) or every chip of a folder (Parquet)."""
    from domainssl.embed.manifest import MANIFEST
    from domainssl.embed.manifest import merge as merge_parts

    if merge is not None:
        rows = merge_parts(merge)
        typer.echo(f"Merged {len(rows)} rows into {merge / MANIFEST}")
        return
    if model is None or data is None:
        raise DomainSSLError("Give the MODEL to embed with and --data (or --merge OUT_DIR).")
    device = pick_device(accelerator)
    inference_precision(precision, device)
    from domainssl.embed.items import is_archive

    if not data.exists():
        raise DomainSSLError(f"Data path {data} does not exist: check --data.")
    if not is_archive(data):
        _embed_chips(model, data, out, map_png, device, precision, tile)
        return
    if out.exists() and not out.is_dir():
        raise DomainSSLError(f"--out {out} is a file: give a folder (it is made if missing).")
    check_tiling(tile=tile, batch_size=batch_size, num_workers=num_workers, mpp=mpp,
                 slide_mpp=slide_mpp, tissue_threshold=tissue_threshold)  # fmt: skip
    run = _archive_run(
        model, data, out, fmt, dtype, tissue_geojson, mpp, slide_mpp, tissue_threshold, tile,
        batch_size or (64 if device == "cuda" else 16),
        num_workers if num_workers is not None else (2 if device == "cuda" else CPU_READERS),
        shard, device, precision,
    )  # fmt: skip
    _embed_archive(run, devices)


def _embed_chips(model: str, data: Path, out: Path, map_png: Path | None, device: str,
                 precision: str, tile: int | None) -> None:  # fmt: skip
    from domainssl.embed.chips import embed_folder
    from domainssl.embed.encoder import encoder_folder

    target = out if out.suffix == ".parquet" else out / "embeddings.parquet"
    encoder = encoder_folder(model, target.parent, tile)
    count = embed_folder(encoder, data, target, map_png, device, precision)
    typer.echo(
        f"Wrote {count} embeddings to {target}" + (f" and a map to {map_png}" if map_png else "")
    )


def _archive_run(model: str, data: Path, out: Path, fmt: str, dtype: str, tissue_geojson: bool,
                 mpp: float | None, slide_mpp: float | None, tissue_threshold: float,
                 tile: int | None, batch_size: int, num_workers: int, shard: str | None,
                 device: str, precision: str) -> ArchiveRun:  # fmt: skip
    from domainssl.embed.archive import ArchiveRun
    from domainssl.embed.claims import Shard
    from domainssl.embed.compute import Compute
    from domainssl.embed.scenes import FORMATS, SceneSettings
    from domainssl.embed.slides import SlideSettings

    formats = tuple(f.strip() for f in fmt.split(",") if f.strip())
    if not formats or set(formats) - set(FORMATS):
        raise DomainSSLError(
            f"--format {fmt!r}: give some of {', '.join(FORMATS)}, comma-separated (e.g. tif,zarr)."
        )
    if dtype not in ("float32", "float16"):
        raise DomainSSLError(f"--dtype must be float32 or float16, not {dtype!r}.")
    return ArchiveRun(
        model, data, out, Shard.parse(shard) if shard else Shard.from_environment(),
        Compute(tile, batch_size, num_workers, device, precision),
        SlideSettings(mpp, slide_mpp, tissue_threshold, dtype, tissue_geojson),
        SceneSettings(formats),
    )  # fmt: skip


def _embed_archive(run: ArchiveRun, devices: int) -> None:
    from domainssl.embed.archive import run_devices, run_shard
    from domainssl.embed.claims import local_device_index
    from domainssl.embed.manifest import MANIFEST

    if devices < 1:
        raise DomainSSLError(f"--devices must be at least 1, not {devices}.")
    if devices > 1:
        if run.compute.device == "cuda":
            from domainssl.models.parallel import require_devices

            require_devices(devices)
        rows = run_devices(run, devices)
        done = sum(r["status"] == "done" for r in rows)
        failed = sum(r["status"] == "failed" for r in rows)
        typer.echo(f"{devices} processes: {done} items embedded, {failed} failed; manifest: "
                   f"{run.out_dir / MANIFEST}")  # fmt: skip
        if done == 0 and not any(r["status"] == "skipped" for r in rows):
            raise DomainSSLError(f"Nothing embedded: see the errors in {run.out_dir / MANIFEST}.")
        return
    if run.compute.device == "cuda":
        from dataclasses import replace

        import torch

        index = local_device_index(torch.cuda.device_count())
        run = replace(run, compute=replace(run.compute, device=f"cuda:{index}"))
    result = run_shard(run)
    typer.echo(result.line(run.out_dir / MANIFEST))
