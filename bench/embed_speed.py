"""Archive embedding of whole slides, measured side by side in one run:

1. speed: `domainssl embed` (reader processes, batch norms folded, channels-last) vs a naive
   loop (OpenSlide ``read_region`` per patch at the best level, batch, eager model) with the
   same model, batch, patches and threads, on the shared slides;
2. memory: peak RSS of `domainssl embed` on 1 vs 10 copies of a slide, and on the slide vs
   one 12x its area (the slide tiled 4 x 3 into a pyramidal TIFF);
3. shards: a cohort of 10 slides by one process vs two concurrent `--shard` processes.

    python bench/embed_speed.py --slides ../shared/data/wsi
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from domainssl.data.pathology import build_grid, read_patch
from domainssl.export import BackboneMeta, export_backbone, load_backbone, preprocess
from domainssl.models.backbones import create_backbone

MPP, SIZE, BATCH = 0.5, 224, 16


def make_encoder(folder: Path) -> Path:
    """A random-init timm ResNet-18 export at 224 px and 0.5 µm/px (speed does not depend on
    the weights)."""
    torch.manual_seed(0)
    rgb = ["red", "green", "blue"]
    meta = BackboneMeta("resnet18", False, 3, rgb, [180.0] * 3, [50.0] * 3, 512, SIZE,
                        "simclr", "pathology", "bench", {}, mpp=MPP)  # fmt: skip
    export_backbone(create_backbone("resnet18", 3, False), meta, folder)
    return folder


def embed_command(model: Path, data: Path, out: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "domainssl", "embed", str(model), "--data", str(data),
            "--out", str(out), "--slide-mpp", "0.25", "--batch-size", str(BATCH),
            "--accelerator", "cpu", *more]  # fmt: skip


def peak_rss_mb(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and the peak RSS (MB) of the largest process ``command`` starts (it,
    or one of its reader processes), measured in a fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys, time; t = time.time(); "
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
               "stderr=subprocess.DEVNULL); "
               "print(time.time() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True,
                            text=True, check=True, env=env)  # fmt: skip
    seconds, kilobytes = result.stdout.split()
    return float(seconds), int(kilobytes) / 1024


def naive_loop(model: Path, slides: list[Path], slide_mpp: float) -> tuple[int, float]:
    """Patches and seconds of: for each slide, the same tissue grid (``build_grid``, as both
    paths must find the tissue), then for each patch OpenSlide ``read_region`` at the best
    level (+ resize), batches of ``BATCH``, the eager model."""
    backbone, meta = load_backbone(model)
    start, count = time.perf_counter(), 0
    for slide_path in slides:
        grid = build_grid(slide_path, SIZE, MPP, 0.5, slide_mpp)
        with openslide.OpenSlide(str(slide_path)) as slide, torch.no_grad():
            for first in range(0, len(grid.coords), BATCH):
                patches = [read_patch(slide, grid, x, y)
                           for x, y in grid.coords[first : first + BATCH]]  # fmt: skip
                backbone(preprocess(meta, torch.from_numpy(np.stack(patches))))
                count += len(patches)
    return count, time.perf_counter() - start


def tiled_slide(source: Path, out: Path, across: int, down: int) -> Path:
    """A pyramidal tiled TIFF of ``source``'s level 0 repeated ``across`` x ``down`` times,
    with its resolution."""
    with openslide.OpenSlide(str(source)) as slide:
        image = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    big = np.tile(image, (down, across, 1))
    with tifffile.TiffWriter(out, bigtiff=True) as tif:
        for level in range(3):
            step, per_cm = 2**level, 1e4 / (mpp * 2**level)
            tif.write(big[::step, ::step], tile=(256, 256), photometric="rgb", compression="zlib",
                      subfiletype=0 if level == 0 else 1, resolution=(per_cm, per_cm),
                      resolutionunit="CENTIMETER")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slides", type=Path, default=Path("../shared/data/wsi"))
    parser.add_argument("--work", type=Path, default=Path("bench/out/embed_speed"))
    parser.add_argument("--section", default="embed-speed")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    work = args.work
    model = make_encoder(work / "encoder")
    slides = sorted(p for p in args.slides.iterdir() if p.suffix in (".svs", ".tif"))
    cmu = next(p for p in slides if p.name.startswith("CMU"))
    big_folder = work / "big"
    big_folder.mkdir()
    slides.append(tiled_slide(cmu, big_folder / "cmu_x12.tif", 4, 3))
    cohort = work / "cohort"
    cohort.mkdir()
    for path in slides:
        os.symlink(path.resolve(), cohort / path.name)
    threads = torch.get_num_threads()

    # 1. speed, side by side: ours with 0 and 2 reader processes, the naive loop
    loops = {}
    for workers in (0, 2):
        start = time.perf_counter()
        command = embed_command(model, cohort, work / f"ours{workers}", "--num-workers",
                                str(workers))  # fmt: skip
        summary = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - start
        loops[workers] = (float(summary.split(" in ")[-1].split(" s ")[0]), wall)
    h5_files = [work / "ours0" / f"{p.stem}.h5" for p in slides]
    ours_patches = sum(h5py.File(h)["features"].shape[0] for h in h5_files if h.is_file())
    readable = [cohort / p.name for p in slides if (work / "ours0" / f"{p.stem}.h5").is_file()]
    naive_patches, naive_seconds = naive_loop(model, readable, 0.25)
    assert naive_patches == ours_patches
    manifest = (work / "ours0" / "manifest.csv").read_text()

    # 2. memory: 1 vs 10 copies, and a slide 12x the area
    copies = {}
    for count in (1, 10):
        folder = work / f"copies{count}"
        folder.mkdir()
        for i in range(count):
            os.symlink(cmu.resolve(), folder / f"copy{i}.svs")
        copies[count] = peak_rss_mb(embed_command(model, folder, work / f"out{count}"))
    big = peak_rss_mb(embed_command(model, big_folder, work / "out_big"))
    readers = {count: peak_rss_mb(embed_command(model, work / f"copies{count}",
                                                work / f"readers{count}", "--num-workers", "2"))
               for count in (1, 10)}  # fmt: skip
    with h5py.File(work / "out_big" / "cmu_x12.h5") as file:
        big_patches = file["features"].shape[0]
    with h5py.File(work / "out1" / "copy0.h5") as file:
        one_patches = file["features"].shape[0]

    # 3. two shards vs one process on the 10 copies
    single = peak_rss_mb(embed_command(model, work / "copies10", work / "single"))[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    shards = [subprocess.Popen(embed_command(model, work / "copies10", work / "sharded",
                                             "--shard", f"{i}/2"),
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for i in range(2)]  # fmt: skip
    for process in shards:
        assert process.wait() == 0
    sharded = time.perf_counter() - start

    naive_rate = naive_patches / naive_seconds
    rows = [
        f"| `domainssl embed --num-workers {w}`: its item loop (tissue, reading, model, h5) / "
        f"the whole command (+ start-up, model load) | {ours_patches} | {loop:.1f} / {wall:.1f} "
        f"| {ours_patches / loop:.1f} / {ours_patches / wall:.1f} |"
        for w, (loop, wall) in loops.items()
    ]
    best = max(ours_patches / loop for loop, _ in loops.values())
    lines = [
        f"## Archive embedding of slides (`domainssl embed`), {os.cpu_count()} CPU cores, "
        f"{threads} torch threads",
        "",
        "Command: `python bench/embed_speed.py --slides ../shared/data/wsi`. Encoder: timm "
        f"ResNet-18 (random init), {SIZE} px patches at {MPP} µm/px, batch {BATCH}; slides "
        "without a resolution read as 0.25 µm/px. The cohort: the shared slides and "
        "CMU-1-Small-Region tiled 4 x 3 into one pyramidal TIFF.",
        "",
        "| path | patches | seconds | patches/s |",
        "|---|---|---|---|",
        f"| naive loop (same tissue grid; read_region per patch at the best level, eager "
        f"model) | {naive_patches} | {naive_seconds:.1f} | {naive_rate:.1f} |",
        *rows,
        "",
        f"Speed-up of the item loop over the naive loop: **{best / naive_rate:.2f}x** (best "
        "of the two reader settings).",
        "",
        "| memory run | items | patches per item | seconds | peak RSS (largest process) |",
        "|---|---|---|---|---|",
        f"| CMU-1-Small-Region | 1 | {one_patches} | {copies[1][0]:.1f} | {copies[1][1]:.0f} MB |",
        f"| 10 copies of it | 10 | {one_patches} | {copies[10][0]:.1f} | {copies[10][1]:.0f} MB |",
        f"| it tiled 4 x 3 (12x the area) | 1 | {big_patches} | {big[0]:.1f} | {big[1]:.0f} MB |",
        f"| CMU-1-Small-Region, 2 reader processes | 1 | {one_patches} | {readers[1][0]:.1f} | "
        f"{readers[1][1]:.0f} MB |",
        f"| 10 copies, 2 reader processes | 10 | {one_patches} | {readers[10][0]:.1f} | "
        f"{readers[10][1]:.0f} MB |",
        "",
        "| 10 copies | seconds |",
        "|---|---|",
        f"| one process ({threads} threads, reading in the process) | {single:.1f} |",
        f"| two concurrent `--shard` processes (1 thread each) | {sharded:.1f} |",
        "",
        "Manifest of the speed run (the plain TIFF is named, not dropped):",
        "",
        "```",
        manifest.strip().replace(str(args.slides.resolve()), "wsi").replace(str(cohort), "wsi"),
        "```",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    write_section(args.section, markdown)


if __name__ == "__main__":
    main()
