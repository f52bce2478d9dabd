"""`domainssl embed` over an archive of slides and scenes: every process takes its shard of
the items, claims each with a lock, writes its outputs under temporary names and renames them
when complete, and records the item in its manifest part; the manifest is merged at the end
of every process (the last one writes every row). A rerun skips items whose outputs exist and
retries the failed ones."""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import rasterio
import torch
import zarr
from tqdm import tqdm

from domainssl.embed.claims import Shard, heartbeat, release, try_claim
from domainssl.embed.compute import Compute
from domainssl.embed.encoder import encoder_folder
from domainssl.embed.items import Item, list_items
from domainssl.embed.manifest import MANIFEST, WORK, ManifestPart, Status, merge, row
from domainssl.embed.scenes import SceneSettings, embed_scene, scene_outputs
from domainssl.embed.slides import SlideSettings, embed_slide, slide_outputs
from domainssl.errors import DomainSSLError
from domainssl.export import load_backbone
from domainssl.infer.runner import TileRunner
from domainssl.models.inference import for_inference


@dataclass(frozen=True)
class ArchiveRun:
    """One process's embedding job."""

    model: str
    data: Path
    out_dir: Path
    shard: Shard
    compute: Compute
    slides: SlideSettings
    scenes: SceneSettings
    progress: bool = True


@dataclass
class ShardResult:
    """What one process did."""

    shard: Shard
    done: int = 0
    failed: int = 0
    skipped: int = 0
    patches: int = 0
    seconds: float = 0.0

    def line(self, manifest: Path) -> str:
        rate = self.patches / max(self.seconds, 1e-9)
        return (
            f"shard {self.shard}: {self.done} embedded, {self.failed} failed, {self.skipped} "
            f"skipped; {self.patches} patches/tiles in {self.seconds:.1f} s ({rate:.1f}/s); "
            f"manifest: {manifest}"
        )


def outputs_of(item: Item, run: ArchiveRun) -> list[Path]:
    """The files that make ``item`` done."""
    if item.kind == "slide":
        return slide_outputs(run.out_dir, item.name, run.slides)
    return scene_outputs(run.out_dir, item.name, run.scenes)


def count_on_disk(outputs: list[Path]) -> int:
    """Patches or tiles held by an item's finished outputs."""
    kinds = {path.suffix: path for path in outputs}
    if ".h5" in kinds:
        with h5py.File(kinds[".h5"], "r") as file:
            return int(file["features"].shape[0])
    if ".parquet" in kinds:
        return int(pq.ParquetFile(kinds[".parquet"]).metadata.num_rows)
    if ".tif" in kinds:
        with rasterio.open(kinds[".tif"]) as src:
            return int(np.isfinite(src.read(1)).sum())
    return int(np.isfinite(zarr.open_array(kinds[".zarr"] / "embedding", mode="r")[0]).sum())


class ShardWorker:
    """Embeds this process's items, one by one, with the encoder loaded once."""

    def __init__(self, run: ArchiveRun) -> None:
        self.run = run
        self.encoder = encoder_folder(run.model, run.out_dir, run.compute.tile)
        self.part = ManifestPart(run.out_dir)
        self.result = ShardResult(run.shard)
        self.bar = tqdm(unit="patch", desc=f"shard {run.shard}", disable=not run.progress,
                        position=run.shard.index % 8)  # fmt: skip
        self._runner: TileRunner | None = None

    @property
    def runner(self) -> TileRunner:
        if self._runner is None:
            backbone, meta = load_backbone(self.encoder)
            device = torch.device(self.run.compute.device)
            network = for_inference(backbone)
            self._runner = TileRunner(network, meta, device, self.run.compute.precision, self.bar)
        return self._runner

    def record(self, item: Item, status: Status, count: int, seconds: float, error: str,
               outputs: list[Path]) -> None:  # fmt: skip
        self.part.add(row(str(item.path), item.kind, status, count, seconds, error, outputs,
                          str(self.run.shard)))  # fmt: skip
        setattr(self.result, status, getattr(self.result, status) + 1)
        if status == "done":
            self.result.patches += count

    def embed(self, item: Item) -> int:
        run = self.run
        if item.kind == "slide":
            return embed_slide(item.path, run.out_dir, item.name, self.runner, self.encoder,
                               run.model, run.slides, run.compute)  # fmt: skip
        tiles = embed_scene(item.path, run.out_dir, item.name, self.encoder, run.scenes,
                            run.compute)  # fmt: skip
        self.bar.update(tiles)
        return tiles

    def process(self, item: Item) -> None:
        """Embed ``item`` unless it cannot be, is done, or another process holds it."""
        if item.kind in ("unreadable", "not a slide"):
            self.record(item, "failed" if item.kind == "unreadable" else "skipped", 0, 0.0,
                        item.problem, [])  # fmt: skip
            return
        outputs = outputs_of(item, self.run)
        if all(p.exists() for p in outputs):  # done by an earlier run (final names are complete)
            self.record(item, "skipped", count_on_disk(outputs), 0.0,
                        "already done (outputs present)", outputs)  # fmt: skip
            return
        lock = self.run.out_dir / WORK / "locks" / f"{item.name}.lock"
        if not try_claim(lock):
            return  # another process is embedding it, and records it
        start = time.monotonic()
        try:
            if all(p.exists() for p in outputs):  # finished by the lock's previous holder
                return
            with heartbeat(lock):
                count = self.embed(item)
            self.record(item, "done", count, time.monotonic() - start, "", outputs)
        except Exception as err:  # one bad item never stops a cohort: recorded, run goes on
            known = isinstance(err, DomainSSLError)
            message = str(err) if known else f"{type(err).__name__}: {err}"
            self.record(item, "failed", 0, time.monotonic() - start, message, [])
        finally:
            release(lock)

    def run_all(self) -> ShardResult:
        start = time.monotonic()
        items = self.run.shard.take(list_items(self.run.data))
        try:
            for number, item in enumerate(items, 1):
                self.bar.set_postfix_str(f"item {number}/{len(items)}")
                self.process(item)
        finally:
            self.bar.close()
            self.result.seconds = time.monotonic() - start
            merge(self.run.out_dir)
        return self.result


def run_shard(run: ArchiveRun) -> ShardResult:
    """Embed ``run.shard``'s items; an error (exit 2) when none of them is embedded."""
    result = ShardWorker(run).run_all()
    if result.done == 0 and result.skipped == 0 and result.failed:
        raise DomainSSLError(
            f"Nothing embedded: all {result.failed} items of shard {run.shard} failed; "
            f"their errors are in {run.out_dir / MANIFEST}."
        )
    return result


def _child(run: ArchiveRun, threads: int) -> None:
    torch.set_num_threads(threads)
    run_shard(run)


def run_devices(run: ArchiveRun, devices: int) -> list[dict[str, str]]:
    """``devices`` processes on this machine, one GPU each (or a share of the CPU cores),
    each a shard of ``run.shard``'s items; the merged manifest rows."""
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // devices)
    children = []
    for index in range(devices):
        shard = Shard(run.shard.index * devices + index, run.shard.count * devices)
        device = f"cuda:{index}" if run.compute.device.startswith("cuda") else "cpu"
        child = replace(run, shard=shard, compute=replace(run.compute, device=device))
        process = context.Process(target=_child, args=(child, threads))
        process.start()
        children.append(process)
    for process in children:
        process.join()
    return merge(run.out_dir)
