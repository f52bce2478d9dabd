"""`domainssl transfer --task classify`: data layouts, heads, outputs and clear errors."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from fixtures import write_chip_folder, write_segmentation_folder
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.data.labeled import load_labeled
from domainssl.errors import DomainSSLError
from domainssl.export import BackboneMeta, export_backbone, load_backbone, preprocess
from domainssl.models.backbones import create_backbone, first_conv_key
from domainssl.models.knn import KNNHead
from domainssl.transfer.classification.finetune import FinetuneConfig, config_for_init
from domainssl.transfer.classification.metrics import score
from domainssl.transfer.classification.model import load_classifier
from domainssl.transfer.classification.probe import ProbeSplit, fit_linear_head
from domainssl.transfer.classification.transfer import embed
from domainssl.transfer.segmentation.model import load_segmenter

runner = CliRunner()


def exported_run(root: Path, bands: int = 4, mpp: float | None = None) -> Path:
    """A run folder with a (randomly initialised) exported resnet10t on ``bands`` bands."""
    torch.manual_seed(0)
    backbone = create_backbone("resnet10t", bands, True)
    meta = BackboneMeta(
        "resnet10t", True, bands, [f"B{i + 1}" for i in range(bands)], [1000.0] * bands,
        [500.0] * bands, 512, 32, "simclr", "eo", "x", {}, mpp,
    )  # fmt: skip
    export_backbone(backbone, meta, root)
    return root


def test_linear_head_separates_a_separable_problem() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)
    centres = torch.randn(3, 16, generator=generator) * 4
    features = centres[labels] + torch.randn(120, 16, generator=generator) + 50  # offset
    index = np.arange(120)
    split = ProbeSplit(index[:80], index[80:100], index[100:])
    layer, val_score, _ = fit_linear_head(features, labels, split, score)
    assert val_score == 1.0
    assert float((layer(features[100:]).argmax(1) == labels[100:]).float().mean()) == 1.0


def test_knn_matches_a_brute_force_reference() -> None:
    generator = torch.Generator().manual_seed(1)
    bank, targets = (
        torch.randn(50, 8, generator=generator),
        torch.randint(3, (50,), generator=generator),
    )
    queries = torch.randn(7, 8, generator=generator)
    head = KNNHead(bank, targets, 3, k=5, temperature=0.1)
    for query, shares in zip(queries, head(queries), strict=True):
        similarity = [float(F.cosine_similarity(query, b, dim=0)) for b in bank]
        nearest = sorted(range(50), key=lambda i: -similarity[i])[:5]
        votes = [0.0, 0.0, 0.0]
        for i in nearest:
            votes[int(targets[i])] += float(np.exp(similarity[i] / 0.1))
        assert torch.allclose(shares, torch.tensor(votes) / sum(votes), atol=1e-5)


def test_layouts_class_folders_given_split_and_multilabel_csv(tmp_path: Path) -> None:
    folders = write_chip_folder(tmp_path / "folders", per_class=10)
    seeded = load_labeled(folders, 16, 4)
    assert not seeded.split_given and seeded.classes == ["class_0", "class_1"]
    assert len(seeded.split.test) == 4 and seeded.images.shape == (20, 4, 16, 16)
    write_chip_folder(tmp_path / "given" / "train", per_class=4)
    write_chip_folder(tmp_path / "given" / "test", per_class=2, seed=1)
    given = load_labeled(tmp_path / "given", 16, 4)
    assert given.split_given and len(given.split.test) == 4
    assert len(given.split.train) + len(given.split.val) == 8
    rows = [
        f"{p.relative_to(folders)},{'a;b' if i % 2 else 'a'}"
        for i, p in enumerate(sorted(folders.rglob("*.tif")))
    ]
    (folders / "labels.csv").write_text("path,labels\n" + "\n".join(rows))
    multi = load_labeled(folders / "labels.csv", 16, 4)
    assert multi.multilabel and multi.targets.shape == (20, 2) and multi.classes == ["a", "b"]


def test_bad_labeled_data_gives_clear_errors(tmp_path: Path) -> None:
    write_chip_folder(tmp_path / "d" / "train", per_class=3)
    write_chip_folder(tmp_path / "d" / "test", classes=3, per_class=1)
    with pytest.raises(DomainSSLError, match=r"class \['class_2'\] that no training image has"):
        load_labeled(tmp_path / "d", 16, 4)
    with pytest.raises(DomainSSLError, match="has 4 bands but the backbone was pretrained on 3"):
        load_labeled(tmp_path / "d" / "train", 16, 3)
    csv = tmp_path / "d" / "bad.csv"
    csv.write_text("missing.tif,a\n")
    with pytest.raises(DomainSSLError, match="line 1: image .*missing.tif does not exist"):
        load_labeled(csv, 16, 4)


@pytest.mark.parametrize("protocol", ["linear", "knn", "finetune"])
def test_transfer_cli_writes_model_metrics_and_report(tmp_path: Path, protocol: str) -> None:
    run = exported_run(tmp_path / "run")
    data = write_chip_folder(tmp_path / "chips", per_class=10)
    args = ["transfer", str(run), "--data", str(data), "--protocol", protocol, "--epochs", "1"]
    result = runner.invoke(app, [*args, "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    out = tmp_path / f"run-classify-{protocol}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["count"] == 4
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "accuracy" in report and f"domainssl infer {out} " in report  # the next command
    split = json.loads((out / "split.json").read_text())
    assert not split["given"] and len(split["test"]) == 4
    model, meta, info = load_classifier(out)
    assert info["classes"] == ["class_0", "class_1"]
    labeled = load_labeled(data, meta.input_size, meta.in_chans)
    test = torch.from_numpy(labeled.split.test)
    predicted = model.scores(preprocess(meta, labeled.images[test])).argmax(1)
    accuracy = float((predicted == labeled.targets[test]).float().mean())
    assert accuracy == pytest.approx(metrics["accuracy"])


def test_random_baseline_and_band_mismatch(tmp_path: Path) -> None:
    run = exported_run(tmp_path / "run", bands=3)
    data = write_chip_folder(tmp_path / "chips", per_class=10)
    result = runner.invoke(app, ["transfer", str(run), "--data", str(data)])
    assert (
        result.exit_code == 2
        and "has 4 bands but the backbone was pretrained on 3" in result.output
    )
    rgb = write_chip_folder(tmp_path / "rgb", per_class=10, fmt="png")
    too_many = torch.cuda.device_count() + 1 if torch.cuda.is_available() else 0
    result = runner.invoke(
        app, ["transfer", str(run), "--data", str(rgb), "--devices", str(too_many)]
    )
    assert result.exit_code == 2 and f"--devices {too_many} but" in result.output
    assert not (tmp_path / "run-classify-linear").exists()  # refused before any work
    result = runner.invoke(app, ["transfer", str(run), "--data", str(rgb), "--baseline", "random"])
    assert result.exit_code == 0, result.output
    model, _, info = load_classifier(tmp_path / "run-classify-linear-random")
    pretrained, _ = load_backbone(run)
    key = first_conv_key(pretrained)
    assert info["settings"]["baseline"] == "random"
    assert not torch.equal(model.backbone.state_dict()[key], pretrained.state_dict()[key])
    assert embed(model.backbone, torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_segment_cli_writes_model_metrics_overlays_and_report(tmp_path: Path) -> None:
    run = exported_run(tmp_path / "run", bands=3)
    data = write_segmentation_folder(tmp_path / "seg", count=6, size=48)
    args = ["transfer", str(run), "--task", "segment", "--data", str(data), "--protocol"]
    result = runner.invoke(app, [*args, "knn"])
    assert result.exit_code == 2 and "knn is for classification" in result.output
    options = ["--epochs", "2", "--tile", "32", "--batch-size", "4", "--accelerator", "cpu"]
    result = runner.invoke(app, [*args, "finetune", *options])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run-segment-finetune"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 1 and len(metrics["per_class_iou"]) == 2
    assert metrics["epochs_run"] == 2 and metrics["test_images"] == 1
    assert list((out / "overlays").glob("*.png")) and "mIoU" in (out / "report.md").read_text()
    model, meta, info = load_segmenter(out)
    assert info["task"] == "segment" and meta.in_chans == 3
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_embed_writes_parquet_rows_matching_the_backbone_and_a_map(tmp_path: Path) -> None:
    run = exported_run(tmp_path / "run")
    data = write_chip_folder(tmp_path / "chips", per_class=5)
    out, map_png = tmp_path / "emb.parquet", tmp_path / "map.png"
    args = ["embed", str(run), "--data", str(data), "--out", str(out), "--map", str(map_png)]
    result = runner.invoke(app, [*args, "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pydict()
    assert len(table["path"]) == 10 and set(table["label"]) == {"class_0", "class_1"}
    backbone, meta = load_backbone(run)
    labeled = load_labeled(data, meta.input_size, meta.in_chans)
    first = labeled.files.index(table["path"][0])
    expected = embed(backbone, preprocess(meta, labeled.images[first : first + 1]))[0]
    assert torch.allclose(torch.tensor(table["embedding"][0]), expected, atol=1e-4)
    assert map_png.read_bytes()[:4] == b"\x89PNG"


def test_transfer_warns_when_the_data_resolution_differs(tmp_path: Path) -> None:
    run = exported_run(tmp_path / "run", bands=3, mpp=0.5)
    data = write_chip_folder(tmp_path / "rgb", per_class=5, fmt="png")
    with pytest.warns(UserWarning, match=r"0.25 µm/px but the backbone was pretrained at 0.5"):
        result = runner.invoke(app, ["transfer", str(run), "--data", str(data), "--mpp", "0.25"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_multilabel_csv_transfer_reports_map_and_f1(tmp_path: Path, protocol: str) -> None:
    run = exported_run(tmp_path / "run")
    folders = write_chip_folder(tmp_path / "chips", per_class=10)
    files = sorted(folders.rglob("*.tif"))
    rows = [
        f"{p.relative_to(folders)},{p.parent.name};{'even' if i % 2 == 0 else 'odd'}"
        for i, p in enumerate(files)
    ]
    (folders / "labels.csv").write_text("\n".join(rows))
    args = ["transfer", str(run), "--data", str(folders / "labels.csv"), "--protocol", protocol]
    result = runner.invoke(app, [*args, "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / f"run-classify-{protocol}" / "metrics.json").read_text())
    assert 0 < metrics["mAP"] <= 1 and 0 <= metrics["f1_micro"] <= 1
    assert set(metrics["per_class_ap"]) == {"class_0", "class_1", "even", "odd"}
    assert "mAP" in (tmp_path / f"run-classify-{protocol}" / "report.md").read_text()


def test_a_random_init_backbone_fine_tunes_at_the_head_rate_a_pretrained_one_slower() -> None:
    config = FinetuneConfig(lr=1e-3, seed=3)
    assert config_for_init(config, "pretrained") == config  # backbone at 0.1x the head
    assert config_for_init(config, "random") == FinetuneConfig(
        lr=1e-3, seed=3, backbone_lr_scale=1.0
    )
