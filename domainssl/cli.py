"""The ``domainssl`` command line: parses options, builds a config, calls one function."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from domainssl.config import RunConfig, build_config, load_config, parse_set, read_yaml, set_dotted
from domainssl.errors import DomainSSLError
from domainssl.paths import SKIPPED_INPUTS

app = typer.Typer(
    help="Domain-adapted self-supervised learning for EO, pathology and RGB-IR re-ID.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
F = TypeVar("F", bound=Callable[..., Any])

RUN_FILES = {
    "config.yaml": "resolved run config",
    "environment.json": "package versions and git commit",
    "band_stats.json": "per-band mean/std used for normalization",
    "metrics.csv": "loss, learning rate and embedding std per step/epoch",
    "checkpoints/last.ckpt": "full training state (for --resume)",
    "backbone.safetensors": "pretrained backbone weights",
    "backbone.json": "backbone metadata: timm name, bands, mean/std, method",
    SKIPPED_INPUTS: "UNREADABLE INPUTS LEFT OUT of this run (one per line)",
}


def user_errors(command: F) -> F:
    """Print a user's mistake as one clear message and exit with code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DomainSSLError as err:
            typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_devices(devices: str | None) -> int | str | None:
    """``"2"`` -> 2; ``"auto"`` and ``"0,1"`` stay strings."""
    return int(devices) if devices is not None and devices.isdigit() else devices


Domain = Annotated[str, typer.Option(help="Domain: eo or pathology.")]
Method = Annotated[str | None, typer.Option(help="simclr, moco, byol, simsiam or orl.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML run config to use.")]
Data = Annotated[str | None, typer.Option(help="Folder of chips or GeoTIFF scene(s).")]
Sets = Annotated[
    list[str] | None, typer.Option("--set", help="Override any key: section.key=value.")
]


@app.command()
@user_errors
def pretrain(
    domain: Domain = "eo",
    method: Method = None,
    config: ConfigFile = None,
    data: Data = None,
    mpp: Annotated[
        float | None, typer.Option(help="Pathology: patch resolution in µm/px (0.5 ~ 20x).")
    ] = None,
    magnification: Annotated[
        float | None,
        typer.Option(help="Pathology: objective magnification instead of --mpp (20 = 0.5 µm/px)."),
    ] = None,
    backbone: Annotated[str | None, typer.Option(help="timm model name.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per device.")] = None,
    max_time: Annotated[
        str | None, typer.Option(help="Wall-clock budget HH:MM:SS; the LR schedule spans it.")
    ] = None,
    devices: Annotated[str | None, typer.Option(help="Devices: 1, 4, auto or 0,1.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes (torchrun / SLURM).")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu or auto.")] = None,
    precision: Annotated[str | None, typer.Option(help="32-true, bf16-mixed, 16-mixed.")] = None,
    out: Annotated[str | None, typer.Option(help="Parent folder of run folders.")] = None,
    name: Annotated[str | None, typer.Option(help="Run folder name.")] = None,
    set_: Sets = None,
    resume: Annotated[
        Path | None, typer.Option(help="Run folder to continue from its last checkpoint.")
    ] = None,
    init: Annotated[
        Path | None, typer.Option(help="ORL: a finished pretrain run used as stage 1.")
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first unreadable chip instead of skipping it.")
    ] = False,
) -> None:
    """Pretrain an encoder with self-supervised learning and export its backbone."""
    from domainssl.pretrain import pretrain as run_pretraining

    if magnification is not None:
        mpp = mpp_of_magnification(magnification, mpp)
    overrides = {
        "data.path": data,
        "data.mpp": mpp,
        "model.backbone": backbone,
        "trainer.epochs": epochs,
        "data.batch_size": batch_size,
        "trainer.max_time": max_time,
        "trainer.devices": parse_devices(devices),
        "trainer.num_nodes": num_nodes,
        "trainer.accelerator": accelerator,
        "trainer.precision": precision,
        "out": out,
        "name": name,
        "method.orl_init": None if init is None else str(init),
        "data.strict": True if strict else None,
    }
    if resume is not None:
        run_config = resumed_config(resume, overrides, set_ or [])
    else:
        run_config = load_config(domain, method, config, overrides, set_)
    run_dir = run_pretraining(run_config, resume=resume)
    describe_run(run_dir)


def mpp_of_magnification(magnification: float, mpp: float | None) -> float:
    """µm/px of an objective magnification, by the usual convention 10 / magnification
    (40x ~ 0.25 µm/px, 20x ~ 0.5 µm/px); scanners differ slightly, so --mpp is exact."""
    if mpp is not None:
        raise DomainSSLError("Give either --mpp or --magnification, not both.")
    if magnification <= 0:
        raise DomainSSLError(f"--magnification must be positive (e.g. 20), got {magnification}.")
    return 10.0 / magnification


def resumed_config(run_dir: Path, overrides: dict[str, Any], sets: list[str]) -> RunConfig:
    """A run's saved config with the CLI's overrides on top (e.g. more epochs)."""
    tree = read_yaml(run_dir / "config.yaml")
    for key, value in overrides.items():
        if value is not None:
            set_dotted(tree, key, value)
    for item in sets:
        set_dotted(tree, *parse_set(item))
    return build_config(tree, str(run_dir / "config.yaml"))


def describe_run(run_dir: Path) -> None:
    """Print where the run folder is and what it holds."""
    typer.secho(f"\nRun folder: {run_dir.resolve()}", fg=typer.colors.GREEN, bold=True)
    for relative, meaning in RUN_FILES.items():
        path = run_dir / relative
        if path.exists():
            typer.echo(f"  {relative:<24} {path.stat().st_size / 1e6:8.2f} MB  {meaning}")
    skipped = run_dir / SKIPPED_INPUTS
    if skipped.is_file():
        lines = skipped.read_text().splitlines()
        typer.secho(f"{len(lines)} unreadable inputs were skipped:", fg=typer.colors.YELLOW)
        typer.echo("  " + "\n  ".join(lines))


@app.command()
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

    from domainssl.data.datamodule import prepare_pretrain_data
    from domainssl.data.proposal_cache import random_box
    from domainssl.stain_setup import StainSetup
    from domainssl.views.object_crops import draw_boxes
    from domainssl.views.presets import Standardize, build_views, view_pair
    from domainssl.views.proposals import ProposalSettings, propose
    from domainssl.views.render import save_view_grid

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
    if run_config.views.crops != "random":
        settings = ProposalSettings.from_views(run_config.views)
        boxes = torch.stack([random_box(propose(image, settings)) for image in raw])
        originals = draw_boxes(originals, boxes)
    pairs = [view_pair(pipeline, raw, boxes) for _ in range(0, count, 2)]
    augmented = [view for pair in pairs for view in pair][:count]
    save_view_grid(originals, augmented, prepared.band_names, out)
    typer.echo(f"Wrote {out}: {len(picks)} samples (rows), original + {count} views each.")


Task = Literal["classify", "segment", "reid"]
Protocol = Literal["linear", "knn", "finetune", "all", "indoor", "v2t", "t2v", "ir2rgb", "rgb2ir"]


@app.command()
@user_errors
def transfer(
    run_dir: Annotated[Path, typer.Argument(help="Folder of a finished `domainssl pretrain`.")],
    data: Annotated[Path, typer.Option(help="Labeled data (class folders, CSV, train/test).")],
    task: Annotated[Task, typer.Option(help="classify, segment or reid.")] = "classify",
    protocol: Annotated[
        Protocol,
        typer.Option(
            help="linear (frozen backbone), knn (classify only), or finetune. Re-ID (frozen): "
            "all / indoor (SYSU-MM01), v2t / t2v (RegDB), ir2rgb / rgb2ir; linear = the first."
        ),
    ] = "linear",
    baseline: Annotated[
        Literal["pretrained", "random"],
        typer.Option(help="random: same protocol on a randomly initialised backbone."),
    ] = "pretrained",
    epochs: Annotated[int, typer.Option(help="Training epochs (fine-tune / segmentation).")] = 10,
    max_time: Annotated[
        str | None, typer.Option(help="Fine-tune budget HH:MM:SS; the best model so far is kept.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate of the new head / decoder.")] = 1e-3,
    tile: Annotated[int, typer.Option(help="Segmentation: training / prediction tile (px).")] = 256,
    trials: Annotated[
        int, typer.Option(help="Re-ID: trials averaged (SYSU-MM01 gallery draws, RegDB splits).")
    ] = 10,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "auto",
    devices: Annotated[int, typer.Option(help="GPUs each training batch is split across.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and training.")] = 0,
    mpp: Annotated[
        float | None,
        typer.Option(help="Pathology: µm/px of the labeled images; warns on a mismatch."),
    ] = None,
) -> None:
    """Transfer a pretrained backbone to labeled data and write model, metrics and report."""
    from domainssl.config import parse_duration
    from domainssl.export import check_resolution, read_meta
    from domainssl.models.parallel import require_devices
    from domainssl.transfer.classify import ClassifySettings, transfer_classify
    from domainssl.transfer.finetune import FinetuneConfig
    from domainssl.transfer.seg_transfer import SegmentSettings, transfer_segment
    from domainssl.transfer.segment import SegmentTrainConfig

    require_devices(devices)
    check_resolution(read_meta(run_dir), mpp, str(data))
    seconds = parse_duration(max_time) if max_time is not None else None
    device = pick_device(accelerator)
    if task == "reid":
        from domainssl.transfer.reid_eval import ReidSettings, transfer_reid

        reid = ReidSettings(protocol, trials, baseline, batch_size, device)
        metrics, out_dir = transfer_reid(run_dir, data, out, reid)
        typer.echo(
            f"{metrics['dataset']} {metrics['protocol']}, {metrics['trials']} trials: rank-1 "
            f"{metrics['rank1']:.4f}, mAP {metrics['mAP']:.4f}; wrote {out_dir} (read report.md)."
        )
        return
    if protocol not in ("linear", "knn", "finetune"):
        raise DomainSSLError(f"--protocol {protocol} is for --task reid (not {task}).")
    suffix = "-random" if baseline == "random" else ""
    out_dir = out or run_dir.parent / f"{run_dir.name}-{task}-{protocol}{suffix}"
    if task == "segment":
        if protocol == "knn":
            raise DomainSSLError("--protocol knn is for classification: use linear or finetune.")
        frozen = protocol == "linear"
        training = SegmentTrainConfig(
            tile, epochs, seconds, batch_size, lr, freeze_encoder=frozen, seed=seed,
            devices=devices,
        )  # fmt: skip
        metrics = transfer_segment(
            run_dir, data, out_dir, SegmentSettings(baseline, training, device)
        )
        typer.echo(f"Test mIoU {metrics['miou']:.4f}; wrote {out_dir} (read report.md first).")
        return
    tuning = FinetuneConfig(epochs, seconds, batch_size, lr, seed=seed, devices=devices)
    settings = ClassifySettings(protocol, baseline, finetune=tuning, device=device, seed=seed)
    metrics = transfer_classify(run_dir, data, out_dir, settings)
    headline = "mAP" if "mAP" in metrics else "accuracy"
    typer.echo(f"Test {headline} {metrics[headline]:.4f}; wrote {out_dir} (read report.md first).")


def pick_device(accelerator: str) -> str:
    """``cpu``, ``gpu`` (an error when there is none) or ``auto`` -> a torch device name."""
    import torch

    if accelerator not in ("cpu", "gpu", "auto"):
        raise DomainSSLError(f"--accelerator must be cpu, gpu or auto, not {accelerator!r}.")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise DomainSSLError("--accelerator gpu but no CUDA GPU is visible: use cpu or auto.")
    return "cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu"


@app.command()
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
    from domainssl.transfer.embed import embed_folder

    count = embed_folder(run_dir, data, out, map_png, pick_device(accelerator))
    typer.echo(
        f"Wrote {count} embeddings to {out}" + (f" and a map to {map_png}" if map_png else "")
    )


@app.command()
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
    batch_size: Annotated[int, typer.Option(help="Tiles per batch.")] = 16,
    probabilities: Annotated[
        bool, typer.Option(help="Write per-class probabilities instead of labels.")
    ] = False,
    cog: Annotated[bool, typer.Option(help="Write a cloud-optimized GeoTIFF.")] = False,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "auto",
    precision: Annotated[str, typer.Option(help="32-true or 16-mixed (AMP on a GPU).")] = "32-true",
    num_workers: Annotated[int, typer.Option(help="Tile reader processes.")] = 2,
    devices: Annotated[int, typer.Option(help="GPUs each batch is split across.")] = 1,
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
    from domainssl.infer.geotiff import infer_geotiff
    from domainssl.infer.wsi import infer_slide, is_slide_source
    from domainssl.models.parallel import require_devices

    require_devices(devices)
    if precision not in ("32-true", "16-mixed"):
        raise DomainSSLError(f"--precision must be 32-true or 16-mixed, not {precision!r}.")
    device, amp = pick_device(accelerator), precision == "16-mixed"
    slide = is_slide_source(source)
    if slide and (overlap or probabilities or cog or resume or devices > 1):
        raise DomainSSLError(
            f"{source} is a whole slide: --overlap, --probabilities, --cog, --resume and "
            "--devices apply to GeoTIFFs only (the CSV holds every class probability)."
        )
    try:
        summary = (
            infer_slide(
                model_dir, source, out, tile, batch_size, device, num_workers, amp,
                progress=True, mpp=mpp, tissue_threshold=tissue_threshold, slide_mpp=slide_mpp,
            )
            if slide
            else infer_geotiff(
                model_dir, source, out, tile, overlap, batch_size, probabilities, device,
                num_workers, amp, cog, progress=True, resume=resume, devices=devices,
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
