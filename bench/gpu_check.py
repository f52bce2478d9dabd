"""The prepared GPU check: every GPU code path once, with numbers, in one command.

    bash bench/gpu_check.sh --out $OUT          # on a lent GPU (about 8 device-minutes)
    bash bench/gpu_check.sh --dry --out /tmp/x  # the same steps, tiny, on the CPU (tests)

1. every pretrain method for about 50 steps at 224 px on ResNet-50 with bf16-mixed (SimCLR
   once more with ``--strategy ddp`` on one device);
2. transfer: classify (linear, fine-tune) and segment;
3. infer on a GeoTIFF mosaic with ``--precision 16-mixed``: the pipeline's tiles/s as a
   share of the bare network's; infer on a slide with a Macenko-normalized model; embed the
   demo slides with it in bf16-mixed;
4. throughput: our SimCLR step vs lightly's (same model, batch, precision), achieved
   TFLOP/s as a share of the bf16 peak, and loader-only samples/s per worker process.

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``; exits 1 if a step failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from gpu_throughput import loader_rates, simclr_rates, tiles_per_second, workers_needed
from infer_common import build_mosaic
from reid_fixtures import write_sysu
from report import write_section

import domainssl.methods  # noqa: F401  (registers the methods and view presets)
from domainssl.config import load_config
from domainssl.data.eo import SceneWindows
from domainssl.data.folder import ChipFolder
from domainssl.data.pathology import SlidePatches, open_slide_grids
from domainssl.paths import DATASETS_DIR

CHIPS = DATASETS_DIR / "eurosat_demo"
SCENE = DATASETS_DIR / "rgbn_demo" / "rgbn.tif"
SLIDES = DATASETS_DIR / "pathology_demo" / "slides"
HE_PATCHES = DATASETS_DIR / "pathology_demo" / "he_patches" / "kather2016_tiles"
METHODS = ["simclr", "moco", "byol", "simsiam", "orl", "mmgl", "densecl", "dino", "ibot", "mae"]
VIT_METHODS = ("ibot", "mae")  # their configs' ViT backbone, at 32 px (2x2 patches) in --dry


@dataclass(frozen=True)
class Sizes:
    """What the check runs at: the real sizes on a GPU, tiny ones on the CPU (``--dry``)."""

    dry: bool
    accelerator: str
    backbone: str
    sample: int
    batch: int
    steps: int
    mosaic: int
    workers: list[int]

    @classmethod
    def of(cls, dry: bool) -> Sizes:
        if dry:
            return cls(True, "cpu", "resnet10t", 32, 8, 2, 512, [0, 1])
        return cls(False, "gpu", "resnet50", 224, 64, 50, 8192, [1, 2, 4, 8])

    def small_heads(self, method: str) -> list[str]:
        """Narrow projection heads for --dry (each method's own keys); none on a GPU."""
        if not self.dry or method == "mae":
            return []
        if method in ("dino", "ibot"):
            return ["method.out_dim=256", "method.hidden_dim=64", "method.bottleneck_dim=32",
                    "method.local_crops=2"]  # fmt: skip
        small = ["method.proj_hidden_dim=64", "method.proj_dim=32"]
        if method in ("byol", "simsiam", "orl"):
            small.append("method.pred_hidden_dim=32")
        return small

    def pretrain_sets(self, method: str) -> list[str]:
        epochs = math.ceil(self.steps / max(300 // self.batch, 1))  # 300 demo chips
        sets = [f"data.batch_size={self.batch}", f"trainer.epochs={epochs}",
                "data.num_workers=2", *self.small_heads(method)]  # fmt: skip
        if method == "orl":  # superpixel grouping: the device's OpenCV has no contrib modules
            sets.append("views.proposal_method=grouping")
        if method in VIT_METHODS:
            crop = 32 if self.dry else self.sample
            return [*sets, f"data.sample_size={crop}", f"views.crop_size={crop}",
                    "data.samples_per_epoch=300"]  # fmt: skip
        sets.append(f"model.backbone={self.backbone}")
        if method == "mmgl":
            person = "[32,16]" if self.dry else "[288,144]"
            return [*sets, f"data.person_size={person}", "model.small_input=false"]
        crop = 16 if self.dry else self.sample
        return [*sets, f"data.sample_size={self.sample}", f"views.crop_size={crop}",
                f"model.small_input={str(self.dry).lower()}",
                "data.samples_per_epoch=300"]  # fmt: skip


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Check:
    """Runs steps, keeps going after a failure, and reports."""

    def __init__(self, sizes: Sizes, out: Path) -> None:
        self.sizes, self.out, self.steps = sizes, out, []  # type: ignore[var-annotated]
        self.device = torch.device("cuda" if sizes.accelerator == "gpu" else "cpu")

    def step(self, name: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        start = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            details, ok, error = action(), True, None
        except Exception as failure:  # a failed step is reported, the others still run
            details, ok = {}, False
            error = "".join(traceback.format_exception(failure))[-2000:]
        self.steps.append(Step(name, ok, round(time.perf_counter() - start, 1), details, error))
        print(f"[gpu_check] {name}: {'ok' if ok else 'FAILED'}", flush=True)
        return details

    def cli(self, *args: str) -> dict[str, Any]:
        """Run ``domainssl ARGS``; its output's last lines, or an error with them."""
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        command = [sys.executable, "-m", "domainssl", *args]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-1500:]
            raise RuntimeError(f"exit {result.returncode}: {' '.join(args)}\n{tail}")
        lines = result.stdout.strip().splitlines()
        return {"output": lines[-1] if lines else ""}

    def pretrain(self, method: str, *extra: str, name: str | None = None) -> dict[str, Any]:
        sizes, runs = self.sizes, self.out / "runs"
        if method == "mmgl":
            person = (32, 16) if sizes.dry else (288, 144)
            data, domain = write_sysu(self.out / "SYSU-MM01", per_camera=4, size=person), "reid"
        else:
            data, domain = CHIPS, "eo"
        args = ["pretrain", "--domain", domain, "--method", method, "--data", str(data),
                "--out", str(runs), "--name", name or method, "--accelerator", sizes.accelerator,
                "--precision", "bf16-mixed", *extra,
                *[f"--set={item}" for item in sizes.pretrain_sets(method)]]  # fmt: skip
        start = time.perf_counter()
        result = self.cli(*args)
        return result | {"seconds_with_start_up": round(time.perf_counter() - start, 1)}

    def report(self, extra: dict[str, Any]) -> bool:
        failed = [s.name for s in self.steps if not s.ok]
        environment = {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "dry": self.sizes.dry,
        }
        summary = {"environment": environment, "sizes": asdict(self.sizes),
                   "steps": [asdict(s) for s in self.steps], "failed": failed, **extra}  # fmt: skip
        (self.out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
        (self.out / "gpu_check.md").write_text(markdown(summary))
        return not failed


def markdown(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    lines = [f"### GPU check ({env['device']}, torch {env['torch']}, dry={env['dry']})", "",
             "| step | ok | seconds | result |", "|---|---|---|---|"]  # fmt: skip
    for step in summary["steps"]:
        result = step["details"].get("output", "") if step["ok"] else "see gpu_check.json"
        shown = {k: v for k, v in step["details"].items()
                 if k != "output" and not isinstance(v, dict)}  # fmt: skip
        text = "; ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in shown.items()) or result  # fmt: skip
        lines.append(f"| {step['name']} | {'yes' if step['ok'] else 'NO'} | {step['seconds']} "
                     f"| {text.replace('|', '/')[:180]} |")  # fmt: skip
    loaders = summary.get("loaders", {})
    if loaders:
        lines += ["", "| loader / workers | samples/s | per worker |", "|---|---|---|"]
        lines += [f"| {key} | {row['samples_per_s']:.0f} | {row['per_worker']:.0f} |"
                  for key, row in loaders.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_segmentation_set(root: Path, tiles: int = 4) -> Path:
    """``images/`` + ``masks/`` GeoTIFF tiles of the RGB+NIR demo scene; the mask is
    vegetation (NDVI > 0.1) vs the rest."""
    with rasterio.open(SCENE) as src:
        scene = src.read().astype(np.float32)  # (4, H, W): red, green, blue, nir
        profile = {"driver": "GTiff", "count": 4, "dtype": "uint8"}
    red, nir = scene[0], scene[3]
    mask = ((nir - red) / np.maximum(nir + red, 1) > 0.1).astype(np.uint8)
    side = min(scene.shape[1], scene.shape[2]) // 2
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for k in range(tiles):
        top, left = (k // 2) * side, (k % 2) * side
        window = (slice(top, top + side), slice(left, left + side))
        with rasterio.open(root / "images" / f"t{k}.tif", "w", height=side, width=side,
                           **profile) as dst:  # fmt: skip
            dst.write(scene[:, window[0], window[1]].astype(np.uint8))
        with rasterio.open(root / "masks" / f"t{k}.tif", "w", height=side, width=side,
                           driver="GTiff", count=1, dtype="uint8") as dst:  # fmt: skip
            dst.write(mask[window][None])
    return root


def throughput(check: Check) -> dict[str, Any]:
    sizes = check.sizes
    sets = [f"model.backbone={sizes.backbone}", "trainer.precision=bf16-mixed",
            f"views.crop_size={16 if sizes.dry else sizes.sample}",
            f"model.small_input={str(sizes.dry).lower()}"]  # fmt: skip
    if sizes.dry:
        sets += ["method.proj_hidden_dim=64", "method.proj_dim=32"]
    config = load_config("eo", "simclr", sets=sets)
    chips = ChipFolder(CHIPS, size=sizes.sample)
    images = torch.stack([chips[i]["image"] for i in range(sizes.batch)]).float()
    return simclr_rates(config, images, check.device, steps=2 if sizes.dry else 20)


def loaders(sizes: Sizes, out: Path) -> dict[str, Any]:
    mosaic = build_mosaic(SCENE, sizes.mosaic, out)
    grids = open_slide_grids(sorted(SLIDES.glob("*.svs")), out / "grids", sizes.sample,
                             0.5, 0.5, None)  # fmt: skip
    datasets = {
        "chips": ChipFolder(CHIPS, size=sizes.sample),
        "scene_windows": SceneWindows([mosaic], size=sizes.sample, length=4096),
        "slide_patches": SlidePatches(grids, length=4096),
    }
    return loader_rates(datasets, sizes.batch, sizes.workers, batches=3 if sizes.dry else 20)


def write_loader_section(rates: dict[str, Any]) -> None:
    """The loader rates at the real sizes as the ``gpu-check-loaders`` section of results.md."""
    rows = [f"| {key} | {row['samples_per_s']:.0f} | {row['per_worker']:.0f} |"
            for key, row in rates.items()]  # fmt: skip
    write_section("gpu-check-loaders", "\n".join([
        f"## Loader-only rates at {Sizes.of(False).sample} px (what one worker feeds a GPU)",
        "", "Command: `python bench/gpu_check.py --loaders-only` on this project's 2-core CPU "
        "machine: the embedded EuroSAT chips (JPEG, resized), windows of a mosaic of the "
        "RGB+NIR scene, tissue patches of the CMU-1 slide region; batches of 64, 20 timed "
        "batches after the first.", "",
        "| data / workers | samples/s | per worker |", "|---|---|---|", *rows]))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check")))
    parser.add_argument(
        "--loaders-only", action="store_true", help="loader rates, real sizes, to results.md"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = Sizes.of(args.dry)
    check = Check(sizes, args.out)
    if args.loaders_only:
        real = replace(Sizes.of(False), workers=[1, 2], mosaic=4096)
        write_loader_section(loaders(real, args.out))
        return
    runs, acc = args.out / "runs", ["--accelerator", sizes.accelerator]
    for method in METHODS:
        check.step(f"pretrain {method} bf16-mixed", partial(check.pretrain, method))
    check.step("pretrain simclr, --strategy ddp on 1 device", lambda: check.pretrain(
        "simclr", "--devices", "1", "--set=trainer.strategy=ddp", name="simclr-ddp"))  # fmt: skip
    simclr = runs / "simclr"
    for protocol in ("linear", "finetune"):
        check.step(f"transfer classify {protocol}", partial(
            check.cli, "transfer", str(simclr), "--data", str(CHIPS), "--protocol", protocol,
            "--epochs", "1", "--out", str(args.out / f"classify-{protocol}"), *acc))  # fmt: skip
    seg_data = write_segmentation_set(args.out / "seg")
    segment = args.out / "segment"
    rgbn = ["--set=data.kind=scenes", "--set=data.samples_per_epoch=128"]
    check.step("pretrain simclr on the RGB+NIR scene", lambda: check.pretrain(
        "simclr", "--data", str(SCENE), *rgbn, name="rgbn"))  # fmt: skip
    check.step("transfer segment finetune (frozen warm-up, then all)", lambda: check.cli(
        "transfer", str(runs / "rgbn"), "--task", "segment", "--data", str(seg_data),
        "--protocol", "finetune", "--epochs", "2", "--frozen-warmup", "0.5", "--tile", "64",
        "--out", str(segment), *acc))  # fmt: skip
    mosaic = build_mosaic(SCENE, sizes.mosaic, args.out)

    def infer_geotiff() -> dict[str, Any]:
        result = check.cli("infer", str(segment), str(mosaic), "--out", str(args.out / "p.tif"),
                           "--precision", "16-mixed", *acc)  # fmt: skip
        found = re.search(r"(\d+) tiles in ([\d.]+) s", result["output"])
        assert found, result["output"]
        pipeline = int(found.group(1)) / float(found.group(2))
        bare = tiles_per_second(segment, 64, 16, check.device)
        return result | {"pipeline_tiles_per_s": pipeline, "model_tiles_per_s": bare,
                         "share_of_model_rate": pipeline / bare}  # fmt: skip

    check.step("infer GeoTIFF 16-mixed (pipeline vs bare model)", infer_geotiff)
    stained = ["--set=data.stain_norm=macenko", "--set=data.samples_per_epoch=128"]
    check.step("pretrain pathology simclr, Macenko", lambda: check.cli(
        "pretrain", "--domain", "pathology", "--out", str(runs), "--name", "macenko",
        "--accelerator", sizes.accelerator, "--epochs", "1", *stained,
        f"--set=model.backbone={sizes.backbone}",
        f"--set=data.batch_size={sizes.batch}"))  # fmt: skip
    check.step("transfer classify a Macenko model", lambda: check.cli(
        "transfer", str(runs / "macenko"), "--data", str(HE_PATCHES), "--out",
        str(args.out / "macenko-cls"), *acc))  # fmt: skip
    slide = next(iter(sorted(SLIDES.glob("*.svs"))))
    check.step("infer slide, Macenko model", lambda: check.cli(
        "infer", str(args.out / "macenko-cls"), str(slide), "--out",
        str(args.out / "heatmap.tif"), *acc))  # fmt: skip
    check.step("embed slides bf16-mixed (one h5 per slide)", lambda: check.cli(
        "embed", str(runs / "macenko"), "--data", str(SLIDES), "--out",
        str(args.out / "slide-features"), "--precision", "bf16-mixed", *acc))  # fmt: skip
    rates = check.step("throughput: our SimCLR step vs lightly's", lambda: throughput(check))
    loader = check.step("data loaders: samples/s per worker", partial(loaders, sizes, args.out))
    if rates and loader:
        for row in loader.values():
            row["workers_for_our_step"] = workers_needed(rates["ours_images_per_s"],
                                                         row["per_worker"])  # fmt: skip
    ok = check.report({"loaders": loader})
    print((args.out / "gpu_check.md").read_text())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
