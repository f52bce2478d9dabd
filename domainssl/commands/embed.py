"""`domainssl embed`: the pooled embedding of every image of a folder, as a Parquet table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from domainssl.commands.common import pick_device, user_errors


@user_errors
def embed(
    run_dir: Annotated[Path, typer.Argument(help="Folder of a finished `domainssl pretrain`.")],
    data: Annotated[Path, typer.Option(help="Folder of images (class subfolders optional).")],
    out: Annotated[Path, typer.Option(help="Parquet file to write.")] = Path("embeddings.parquet"),
    map_png: Annotated[
        Path | None, typer.Option("--map", help="Also write a 2-D t-SNE map (PNG).")
    ] = None,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "auto",
) -> None:
    """Write the pooled embedding of every image (with path and label) to Parquet."""
    from domainssl.embed.chips import embed_folder

    count = embed_folder(run_dir, data, out, map_png, pick_device(accelerator))
    typer.echo(
        f"Wrote {count} embeddings to {out}" + (f" and a map to {map_png}" if map_png else "")
    )
