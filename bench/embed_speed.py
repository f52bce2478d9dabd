"""Archive embedding of whole slides, measured side by side in one run:

1. speed: `domainssl embed` (reader processes, batch norms folded, channels-last) vs a naive
   loop (OpenSlide ``read_region`` per patch at the best level, batch, eager model) with the
   same model, batch, patches and threads, on the shared slides; both in float32 and in
   bfloat16 autocast (``--precision bf16-mixed``), with how far the bf16 features are from
   the float32 ones; the model alone, eager, prepared, and prepared then compiled
   (TorchScript, inductor); and from these the most any float32 loop on this model can gain
   over the naive one (the naive loop's time over the model's own time), with the model's
   FLOP rate next to the machine's float32 matrix-multiply rate;
2. memory: peak RSS of `domainssl embed` on 1 vs 10 copies of a slide, and on the slide vs
   one 12x its area (the slide tiled 4 x 3 into a pyramidal TIFF), without and with reader
   processes, in 3 rounds;
3. shards: a cohort of 10 slides by one process vs two concurrent `--shard` processes.

    python bench/embed_speed.py --slides ../shared/data/wsi

With ``--device cuda`` (a GPU machine) both paths run on the GPU and the memory and shard
parts are left out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import openslide
import tifffile
import torch
import torch._inductor.config as inductor_config
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from domainssl.data.pathology import build_grid, read_patch
from domainssl.export import BackboneMeta, export_backbone, load_backbone, preprocess
from domainssl.models.backbones import create_backbone
from domainssl.models.inference import for_inference

MPP, SIZE, BATCH = 0.5, 224, 16
READERS = ("--num-workers", "2")
PRECISIONS: dict[str, torch.dtype | None] = {"32-true": None, "bf16-mixed": torch.bfloat16}
NETWORKS = ("eager", "prepared", "prepared, TorchScript", "prepared, inductor")
"""The model-alone table's rows."""


def make_encoder(folder: Path) -> Path:
    """A random-init timm ResNet-18 export at 224 px and 0.5 µm/px (speed does not depend on
    the weights)."""
    torch.manual_seed(0)
    rgb = ["red", "green", "blue"]
    meta = BackboneMeta("resnet18", False, 3, rgb, [180.0] * 3, [50.0] * 3, 512, SIZE,
                        "simclr", "pathology", "bench", {}, mpp=MPP)  # fmt: skip
    export_backbone(create_backbone("resnet18", 3, False), meta, folder)
    return folder


def embed_command(model: Path, data: Path, out: Path, *more: str, device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "domainssl", "embed", str(model), "--data", str(data),
            "--out", str(out), "--slide-mpp", "0.25", "--batch-size", str(BATCH),
            "--accelerator", "gpu" if device == "cuda" else "cpu", *more]  # fmt: skip


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


def naive_loop(
    model: Path, slides: list[Path], slide_mpp: float, device: str, dtype: torch.dtype | None
) -> tuple[int, float]:
    """Patches and seconds of: for each slide, the same tissue grid (``build_grid``, as both
    paths must find the tissue), then for each patch OpenSlide ``read_region`` at the best
    level (+ resize), batches of ``BATCH``, the eager model (under autocast to ``dtype``
    unless None)."""
    backbone, meta = load_backbone(model)
    backbone = backbone.to(device)
    start, count = time.perf_counter(), 0
    for slide_path in slides:
        grid = build_grid(slide_path, SIZE, MPP, 0.5, slide_mpp)
        with openslide.OpenSlide(str(slide_path)) as slide, torch.no_grad():
            for first in range(0, len(grid.coords), BATCH):
                patches = [read_patch(slide, grid, x, y)
                           for x, y in grid.coords[first : first + BATCH]]  # fmt: skip
                inputs = preprocess(meta, torch.from_numpy(np.stack(patches)).to(device))
                with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
                    backbone(inputs).float().cpu()
                count += len(patches)
    return count, time.perf_counter() - start


def model_alone(model: Path, slide_path: Path, device: str) -> dict[tuple[str, str], float]:
    """Median ms per patch of the model alone on one batch of real patches, per network x
    (float32 or bf16), over 5 alternating rounds of 5 batches each. Networks: eager; prepared
    for inference (batch norms folded, channels-last: what `domainssl embed` runs); two
    compilers tried on the prepared one, TorchScript (trace, freeze, optimize_for_inference)
    and inductor (``torch.compile`` with weight freezing); key ("compile", precision): the
    seconds inductor took to compile (its first batch)."""
    grid = build_grid(slide_path, SIZE, MPP, 0.5, 0.25)
    with openslide.OpenSlide(str(slide_path)) as slide:
        patches = np.stack([read_patch(slide, grid, x, y) for x, y in grid.coords[:BATCH]])
    eager, meta = load_backbone(model)
    prepared = for_inference(load_backbone(model)[0]).to(device)
    inputs = preprocess(meta, torch.from_numpy(patches).to(device))
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    times: dict[tuple[str, str], list[float]] = {}
    result: dict[tuple[str, str], float] = {}
    with torch.no_grad():
        traced = torch.jit.trace(for_inference(load_backbone(model)[0]).to(device), inputs)
        torchscript = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        inductor_config.freezing = True
        inductor = torch.compile(for_inference(load_backbone(model)[0]).to(device))
        for precision, dtype in PRECISIONS.items():
            with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
                start = time.perf_counter()
                inductor(inputs)
                result["compile", precision] = time.perf_counter() - start
    networks: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "eager": eager.eval().to(device),
        "prepared": prepared,
        "prepared, TorchScript": torchscript,
        "prepared, inductor": inductor,
    }
    with torch.no_grad():
        for _ in range(5):
            for name, network in networks.items():
                for precision, dtype in PRECISIONS.items():
                    if name == "prepared, TorchScript" and dtype is not None:
                        continue  # traced in float32: autocast does not reach inside
                    with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
                        network(inputs)  # warm-up
                        synchronize(device)
                        start = time.perf_counter()
                        for _ in range(5):
                            network(inputs).float().cpu()
                        seconds = time.perf_counter() - start
                    times.setdefault((name, precision), []).append(1000 * seconds / (5 * BATCH))
    return result | {key: float(np.median(values)) for key, values in times.items()}


def ms(value: float | None) -> str:
    """A model-alone cell: ms per patch, or n/a where the pair was not run."""
    return "n/a" if value is None else f"{value:.1f}"


def matmul_gflops(device: str) -> float:
    """The machine's float32 rate (GFLOP/s): the best of 5 products of two 4096 x 4096
    matrices."""
    a, b = torch.randn(4096, 4096, device=device), torch.randn(4096, 4096, device=device)
    best = float("inf")
    for _ in range(6):  # the first one warms up
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * 4096**3 / best / 1e9


def model_gflop(model: Path, device: str) -> float:
    """GFLOP of the encoder per patch, as torch's FLOP counter counts them."""
    backbone = load_backbone(model)[0].eval().to(device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        backbone(torch.zeros(BATCH, 3, SIZE, SIZE, device=device))
    return counter.get_total_flops() / BATCH / 1e9


def ceiling_lines(
    alone: dict[tuple[str, str], float], naive_s: float, patches: int, gflop: float, rate: float
) -> list[str]:
    """The most a float32 loop on this model can gain over the naive loop: the naive loop's
    seconds over the model's own seconds for the same patches (the prepared network that
    `domainssl embed` runs, and the fastest network), and how close the prepared network
    runs to the machine's float32 rate."""
    prepared = alone["prepared", "32-true"]
    fastest = min(NETWORKS, key=lambda name: alone[name, "32-true"])
    fast = alone[fastest, "32-true"]
    return [
        f"The float32 ceiling: the prepared network alone needs {patches * prepared / 1000:.1f} "
        f"s for the {patches} patches, of the naive loop's {naive_s:.1f} s (median). With "
        "reading, tissue detection and writing costing nothing, `domainssl embed` in float32 "
        f"would be at most **{naive_s / (patches * prepared / 1000):.2f}x** faster than the "
        f"naive loop; with the fastest network of the table ({fastest}, {fast:.1f} ms/patch) "
        f"at most **{naive_s / (patches * fast / 1000):.2f}x**. The network computes "
        f"{gflop:.2f} GFLOP per patch; prepared, {gflop / prepared * 1000:.0f} GFLOP/s: "
        f"{100 * gflop / prepared * 1000 / rate:.0f}% of this machine's float32 "
        f"matrix-multiply rate ({rate:.0f} GFLOP/s, 4096 x 4096).",
    ]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bf16_error(exact: list[Path], half: list[Path]) -> tuple[float, float]:
    """Median and largest relative L2 distance of bf16 features from float32 ones, per patch."""
    errors = []
    for one, two in zip(exact, half, strict=True):
        with h5py.File(one) as a, h5py.File(two) as b:
            x, y = a["features"][:], b["features"][:]
        errors.append(np.linalg.norm(y - x, axis=1) / np.linalg.norm(x, axis=1))
    joined = np.concatenate(errors)
    return float(np.median(joined)), float(joined.max())


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
    parser.add_argument("--section", help="default embed-speed (embed-speed-gpu with cuda)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="Repeats of the speed pairs.")
    args = parser.parse_args()
    section = args.section or ("embed-speed-gpu" if args.device == "cuda" else "embed-speed")
    shutil.rmtree(args.work, ignore_errors=True)
    work = args.work
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work.resolve() / "inductor")  # compiled cold
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

    # 1. speed, side by side in each of ``--rounds`` rounds: the naive loop and ours with 0
    # and 2 reader processes, each in float32 and in bf16 autocast
    loops: dict[tuple[str, int], list[tuple[float, float]]] = {}
    naive: dict[str, list[float]] = {}
    done = [p.stem for p in slides]
    patches = 0
    for round_ in range(args.rounds):
        for precision, dtype in PRECISIONS.items():
            for workers in (0, 2):
                out = work / f"ours-{precision}-{workers}-{round_}"
                start = time.perf_counter()
                command = embed_command(model, cohort, out, "--num-workers", str(workers),
                                        "--precision", precision, device=args.device)  # fmt: skip
                summary = subprocess.run(command, check=True, capture_output=True, text=True)
                wall = time.perf_counter() - start
                loop = float(summary.stdout.split(" in ")[-1].split(" s ")[0])
                loops.setdefault((precision, workers), []).append((loop, wall))
                done = [s for s in done if (out / f"{s}.h5").is_file()]
            readable = [cohort / p.name for p in slides if p.stem in done]
            patches, seconds = naive_loop(model, readable, 0.25, args.device, dtype)
            naive.setdefault(precision, []).append(seconds)
    h5_files = {precision: [work / f"ours-{precision}-0-0" / f"{s}.h5" for s in done]
                for precision in PRECISIONS}  # fmt: skip
    ours_patches = sum(h5py.File(h)["features"].shape[0] for h in h5_files["32-true"])
    assert patches == ours_patches
    error_median, error_max = bf16_error(h5_files["32-true"], h5_files["bf16-mixed"])
    manifest = (work / "ours-32-true-0-0" / "manifest.csv").read_text()
    alone = model_alone(model, cmu, args.device)
    gflop, rate = model_gflop(model, args.device), matmul_gflops(args.device)
    ceiling = ceiling_lines(alone, float(np.median(naive["32-true"])), ours_patches, gflop, rate)
    speed = [
        *speed_lines(loops, naive, ours_patches, error_median, error_max),
        "",
        f"The model alone (ms per patch, batch {BATCH} of CMU-1-Small-Region patches, median of "
        "5 alternating rounds):",
        "",
        "| network | 32-true | bf16-mixed |",
        "|---|---|---|",
        *[
            f"| {name} | {alone[name, '32-true']:.1f} | {ms(alone.get((name, 'bf16-mixed')))} |"
            for name in NETWORKS
        ],
        "",
        f"Inductor compiled for {alone['compile', '32-true']:.0f} s (float32) and "
        f"{alone['compile', 'bf16-mixed']:.0f} s (bf16) before its first batch; TorchScript "
        "has no bf16 entry (traced in float32, autocast does not reach inside).",
        "",
        *ceiling,
    ]
    header = [
        f"## Archive embedding of slides (`domainssl embed`), {describe(args.device)}, "
        f"{threads} torch threads",
        "",
        f"Command: `python bench/embed_speed.py --slides ../shared/data/wsi"
        f"{' --device cuda' if args.device == 'cuda' else ''}`. Encoder: timm "
        f"ResNet-18 (random init), {SIZE} px patches at {MPP} µm/px, batch {BATCH}; slides "
        "without a resolution read as 0.25 µm/px. The cohort: the shared slides and "
        "CMU-1-Small-Region tiled 4 x 3 into one pyramidal TIFF.",
        "",
    ]
    if args.device == "cuda":  # the memory and shard parts are about the CPU machine
        finish(section, [*header, *speed])
        return

    # 2. memory: 1 vs 10 copies, and a slide 12x the area, without and with reader
    # processes; 3 rounds, as the heap's layout (and so the peak) can differ from run to run
    for count in (1, 10):
        folder = work / f"copies{count}"
        folder.mkdir()
        for i in range(count):
            os.symlink(cmu.resolve(), folder / f"copy{i}.svs")
    memory_runs = {  # label: (input folder, items, first output, more options)
        "CMU-1-Small-Region": (work / "copies1", 1, "copy0.h5", ()),
        "10 copies of it": (work / "copies10", 10, "copy0.h5", ()),
        "it tiled 4 x 3 (12x the area)": (big_folder, 1, "cmu_x12.h5", ()),
        "CMU-1-Small-Region, 2 reader processes": (work / "copies1", 1, "copy0.h5", READERS),
        "10 copies, 2 reader processes": (work / "copies10", 10, "copy0.h5", READERS),
        "it tiled 4 x 3, 2 reader processes": (big_folder, 1, "cmu_x12.h5", READERS),
    }
    memory: dict[str, list[tuple[float, float]]] = {}
    for round_ in range(3):
        for number, (label, (folder, _, _, more)) in enumerate(memory_runs.items()):
            out = work / f"memory{number}-{round_}"
            memory.setdefault(label, []).append(peak_rss_mb(embed_command(model, folder, out,
                                                                          *more)))  # fmt: skip
    memory_rows = []
    for number, (label, (_, items, first, _)) in enumerate(memory_runs.items()):
        with h5py.File(work / f"memory{number}-0" / first) as file:
            per_item = file["features"].shape[0]
        walls, peaks = [r[0] for r in memory[label]], [r[1] for r in memory[label]]
        memory_rows.append(f"| {label} | {items} | {per_item} | {spread(walls)} | "
                           f"{spread(peaks, 0)} MB |")  # fmt: skip

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

    lines = [
        *header,
        *speed,
        "",
        "Memory, median [min-max] over 3 rounds:",
        "",
        "| memory run | items | patches per item | seconds | peak RSS (largest process) |",
        "|---|---|---|---|---|",
        *memory_rows,
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
    finish(section, lines)


def spread(values: list[float], digits: int = 1) -> str:
    """Median [min-max] of ``values``."""
    return f"{np.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def speed_lines(
    loops: dict[tuple[str, int], list[tuple[float, float]]],
    naive: dict[str, list[float]],
    patches: int,
    error_median: float,
    error_max: float,
) -> list[str]:
    """The speed table (median [min-max] over the rounds): the naive loop and ours, per
    precision and reader count; the speed-ups within each round at equal precision and of
    ours in bf16 over the naive float32 loop."""
    rows = []
    for precision in PRECISIONS:
        rates = [patches / s for s in naive[precision]]
        rows.append(
            f"| naive loop, {precision} (same tissue grid; read_region per patch at the best "
            f"level, eager model) | {patches} | {spread(naive[precision])} | {spread(rates)} |"
        )
        for (p, workers), runs in loops.items():
            if p == precision:
                loop_s, wall_s = [r[0] for r in runs], [r[1] for r in runs]
                rows.append(
                    f"| `domainssl embed --precision {p} --num-workers {workers}`: its item loop "
                    "(tissue, reading, model, h5) / the whole command (+ start-up, model load) "
                    f"| {patches} | {spread(loop_s)} / {spread(wall_s)} "
                    f"| {spread([patches / s for s in loop_s])} / "
                    f"{spread([patches / s for s in wall_s])} |"
                )
    rounds = len(naive["32-true"])

    def best(precision: str, round_: int) -> float:
        return min(runs[round_][0] for (p, _), runs in loops.items() if p == precision)

    def gains(ours: str, theirs: str) -> str:
        return spread([naive[theirs][r] / best(ours, r) for r in range(rounds)], 2)

    return [
        f"Median [min-max] over {rounds} rounds; each round runs every path once, in the "
        "order of the table.",
        "",
        "| path | patches | seconds | patches/s |",
        "|---|---|---|---|",
        *rows,
        "",
        "Speed-up of the item loop (the better reader setting of the round) over the naive "
        f"loop of the same round: **{gains('32-true', '32-true')}x** in float32, "
        f"**{gains('bf16-mixed', 'bf16-mixed')}x** with both in bf16, "
        f"**{gains('bf16-mixed', '32-true')}x** for ours in bf16 over the naive loop in "
        "float32. bf16 features vs float32 ones, per patch, relative L2 distance: median "
        f"{error_median:.4f}, largest {error_max:.4f}.",
    ]


def describe(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{os.cpu_count()} CPU cores"


def finish(section: str, lines: list[str]) -> None:
    markdown = "\n".join(lines)
    print(markdown)
    write_section(section, markdown)


if __name__ == "__main__":
    main()
