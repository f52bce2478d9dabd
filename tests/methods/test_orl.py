"""ORL: kNN retrieval, pair mining, the stage-3 module and the three-stage CLI run."""

from pathlib import Path

import numpy as np
import torch
from conftest import fast
from torch import nn
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.config import RunConfig
from domainssl.data.proposal_cache import ProposalBoxes, ProposalStore
from domainssl.methods.orl.mining import MiningSettings, knn_cosine, mine_pairs, pairs_kept
from domainssl.methods.orl.module import ORL
from domainssl.methods.orl.pairs import FixedImages, PairedSamples, load_pairs


def test_knn_matches_brute_force_in_small_blocks() -> None:
    torch.manual_seed(0)
    points = torch.randn(300, 16)
    sims, index = knn_cosine(points, points, 5, exclude_self=True, block_bytes=4 * 300 * 7)
    unit = nn.functional.normalize(points, dim=1)
    full = unit @ unit.T
    full.fill_diagonal_(-float("inf"))
    expected_sims, expected_index = full.topk(5, dim=1)
    assert torch.allclose(sims, expected_sims, atol=1e-5)
    assert torch.equal(index, expected_index)


def test_knn_between_sets_chunks_keys() -> None:
    torch.manual_seed(1)
    queries, keys = torch.randn(40, 8), torch.randn(70_000, 8)  # two key chunks
    sims, index = knn_cosine(queries, keys, 3, block_bytes=2**20)
    full = nn.functional.normalize(queries, dim=1) @ nn.functional.normalize(keys, dim=1).T
    assert torch.equal(index, full.topk(3, dim=1).indices)
    assert torch.allclose(sims, full.topk(3, dim=1).values, atol=1e-5)


class FirstPixel(nn.Module):
    """A stand-in encoder: the RoI's mean per band (so similar RoIs are similar boxes)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def test_pairs_kept_per_neighbour_follow_the_released_code() -> None:
    assert pairs_kept(0.1, 8, 8) == 1  # max(1, int(0.1 * 8)); a share of all 64 pairs gave 7
    assert pairs_kept(0.1, 40, 8) == 4
    assert pairs_kept(0.5, 10, 1) == 5
    assert pairs_kept(0.9, 4, 1) == 3
    assert pairs_kept(0.01, 3, 3) == 1  # at least one


def test_mining_keeps_top_fraction_and_resumes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = torch.rand(12, 3, 16, 16) * 255
    boxes = torch.tensor([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0.5, 0.5, 1], [0.5, 0, 1, 0.5]])
    store = ProposalStore(boxes.repeat(12, 1), torch.arange(0, 49, 4))
    settings = MiningSettings(neighbors=3, top_fraction=0.25, roi_size=8, batch_size=5)
    folder = mine_pairs(FirstPixel(), FixedImages(images), store, [0.0] * 3, [1.0] * 3,
                        settings, tmp_path)  # fmt: skip
    pairs = load_pairs(folder)
    assert len(pairs) == 12 * 3 * 1  # max(1, int(0.25 * 4)) pairs per image-neighbour pair
    # brute force for image 0 and its first neighbour: the best RoI pair by cosine
    means = torch.stack([_box_means(images[i], boxes) for i in range(12)])  # (12, 4, 3)
    start, end = pairs.rows_of(0)
    neighbor = int(pairs.neighbor[start])
    unit = nn.functional.normalize(means, dim=2)
    best = float((unit[0] @ unit[neighbor].T).max())
    assert (
        abs(float(pairs.similarity[start:end][pairs.neighbor[start:end] == neighbor].max()) - best)
        < 1e-4
    )
    stamp = next(folder.glob("chunk_*.npz")).stat().st_mtime_ns
    mine_pairs(FirstPixel(), FixedImages(images), store, [0.0] * 3, [1.0] * 3, settings, tmp_path)
    assert next(folder.glob("chunk_*.npz")).stat().st_mtime_ns == stamp


def _box_means(image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    side = image.shape[-1]
    rows = []
    for x0, y0, x1, y1 in (boxes * side).long().tolist():
        rows.append(image[:, y0:y1, x0:x1].mean(dim=(1, 2)))
    return torch.stack(rows)


def test_stage_three_step_uses_all_three_losses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = torch.rand(6, 2, 24, 24) * 100
    store = ProposalStore(torch.tensor([[0.1, 0.1, 0.6, 0.7]]).repeat(6, 1), torch.arange(7))
    boxes = ProposalBoxes(FixedImages(images), store)
    pairs_dir = tmp_path / "pairs"
    pairs_dir.mkdir()
    from domainssl.methods.orl.pairs import save_chunk

    box = np.array([[0.2, 0.2, 0.8, 0.8]] * 2, np.float32)
    save_chunk(pairs_dir / "chunk_000000000.npz",
               {"image": np.array([0, 1]), "neighbor": np.array([3, 4]), "box": box,
                "neighbor_box": box, "similarity": np.ones(2, np.float32)})  # fmt: skip
    dataset = PairedSamples(boxes, load_pairs(pairs_dir))
    samples = [dataset[i] for i in range(6)]
    assert [bool(s["has_pair"]) for s in samples] == [True, True, False, False, False, False]
    assert torch.equal(samples[0]["neighbor"], images[3])
    batch = torch.utils.data.default_collate(samples)
    config = RunConfig.model_validate(
        {"model": {"backbone": "resnet10t"}, "views": {"crop_size": 16},
         "method": {"name": "orl", "proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 8}}
    )  # fmt: skip
    method = ORL(config, ["a", "b"], [50.0, 50.0], [30.0, 30.0])
    batch = method.on_after_batch_transfer(batch, 0)
    assert all(v.shape == (6, 2, 16, 16) for key in ("views", "intra", "inter") for v in batch[key])
    losses, embedding = method.pair_losses([batch[key] for key in ("views", "intra", "inter")])
    assert [loss.shape for loss in losses] == [(6,)] * 3 and embedding.shape == (6, 8)
    assert all(bool(((loss >= 0) & (loss <= 4)).all()) for loss in losses)


def test_cli_orl_runs_three_stages_and_exports(tif_chips: Path, tmp_path: Path) -> None:
    sets = [*fast("orl"), "method.orl_neighbors=3", "views.proposal_method=grouping",
            "views.proposal_min_side=6", "trainer.limit_train_batches=2"]  # fmt: skip
    args = ["pretrain", "--domain", "eo", "--method", "orl", "--data", str(tif_chips),
            "--out", str(tmp_path), "--name", "orl", "--max-time", "00:05:00"]  # fmt: skip
    result = CliRunner().invoke(app, args + [f"--set={s}" for s in sets])
    assert result.exit_code == 0, result.output
    for stage in ("stage 1/3", "stage 2/3", "stage 3/3"):
        assert stage in result.output
    run = tmp_path / "orl"
    assert (run / "stage1" / "backbone.safetensors").is_file()
    assert len(load_pairs(run / "stage2" / "pairs")) > 0
    assert (run / "backbone.safetensors").is_file()
    assert "orl" in (run / "backbone.json").read_text()


def test_cli_orl_init_reuses_a_run_and_rejects_a_bad_one(tif_chips: Path, tmp_path: Path) -> None:
    base = [*fast("byol"), "trainer.limit_train_batches=2", "views.proposal_method=grouping"]
    runner = CliRunner()
    first = ["pretrain", "--method", "byol", "--data", str(tif_chips), "--out", str(tmp_path),
             "--name", "byol"]  # fmt: skip
    assert runner.invoke(app, first + [f"--set={s}" for s in base]).exit_code == 0
    orl = ["pretrain", "--method", "orl", "--data", str(tif_chips), "--out", str(tmp_path),
           "--name", "orl", "--init", str(tmp_path / "byol")]  # fmt: skip
    result = runner.invoke(app, orl + [f"--set={s}" for s in base])
    assert result.exit_code == 0, result.output
    assert "stage 1/3: reusing" in result.output and not (tmp_path / "orl" / "stage1").exists()
    bad = runner.invoke(app, [*orl[:-1], str(tmp_path), "--name", "orl2"])
    assert bad.exit_code == 2 and "holds neither an exported backbone" in bad.output


def test_cli_object_aware_crops_with_every_method(tif_chips: Path, tmp_path: Path) -> None:
    for method in ("simclr", "moco", "byol", "simsiam"):
        sets = [*fast(method), "trainer.limit_train_batches=1", "views.crops=object_aware",
                "views.proposal_method=grouping"]  # fmt: skip
        args = ["pretrain", "--method", method, "--data", str(tif_chips), "--out",
                str(tmp_path), "--name", method]  # fmt: skip
        result = CliRunner().invoke(app, args + [f"--set={s}" for s in sets])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "simclr" / "proposals" / "meta.json").is_file()


def test_cli_views_object_aware(tif_chips: Path, tmp_path: Path) -> None:
    out = tmp_path / "oac.png"
    args = ["views", "--data", str(tif_chips), "--crops", "object_aware", "--out", str(out),
            "--samples", "3", "--count", "4", "--set=views.proposal_method=grouping"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
