"""Label efficiency: subsets, t intervals, and --seeds / --label-fractions / --compare-random
through the CLI for classification and segmentation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_chip_folder, write_segmentation_folder
from test_transfer import exported_run
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.errors import DomainSSLError
from domainssl.transfer.label_efficiency import (
    SweepJournal,
    SweepPlan,
    labeled_subset,
    parse_fractions,
    run_sweep,
    t_interval,
)

runner = CliRunner()


def test_t_interval_matches_the_textbook_formula() -> None:
    mean, low, high = t_interval([0.80, 0.90, 0.85])
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert low is not None and high is not None
    assert math.isclose(mean, 0.85) and math.isclose(high - mean, half, rel_tol=1e-9)
    assert math.isclose(mean - low, half, rel_tol=1e-9)
    assert t_interval([0.7]) == (0.7, None, None)


def test_stratified_subsets_keep_every_class_and_depend_on_the_seed() -> None:
    train = np.arange(100, 200)
    strata = np.repeat(np.arange(4), 25)
    chosen = labeled_subset(train, 0.1, seed=0, strata=strata)
    assert len(chosen) == 10 and set(strata[chosen - 100]) == {0, 1, 2, 3}
    assert np.array_equal(chosen, labeled_subset(train, 0.1, seed=0, strata=strata))
    assert not np.array_equal(chosen, labeled_subset(train, 0.1, seed=1, strata=strata))
    assert len(labeled_subset(train, 0.01, seed=0, strata=strata)) == 4  # one per class
    assert np.array_equal(labeled_subset(train, 1.0, seed=3, strata=strata), train)


def test_label_fractions_must_be_shares() -> None:
    assert parse_fractions("1.0, 0.01,0.1") == (0.01, 0.1, 1.0)
    for bad in ("0", "1.5", "a,b", ""):
        with pytest.raises(DomainSSLError, match="--label-fractions"):
            parse_fractions(bad)


def test_classify_sweep_gives_curves_intervals_and_the_plain_result_at_all_labels(
    tmp_path: Path,
) -> None:
    run = exported_run(tmp_path / "run")
    data = write_chip_folder(tmp_path / "chips", per_class=10)
    base = ["transfer", str(run), "--data", str(data), "--accelerator", "cpu"]
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    accuracy = json.loads((tmp_path / "run-classify-linear" / "metrics.json").read_text())
    sweep = ["--seeds", "2", "--label-fractions", "0.5,1.0", "--compare-random"]
    result = runner.invoke(app, [*base, *sweep])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run-classify-linear-label-efficiency"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and set(metrics["curves"]) == {"pretrained", "random"}
    half, full = metrics["curves"]["pretrained"]
    assert half["labels"] < full["labels"] and len(full["per_seed"]) == 2
    assert full["per_seed"] == [accuracy["accuracy"]] * 2  # all labels: the plain transfer
    assert full["low"] == full["high"] == full["mean"]  # a linear probe on all labels is fixed
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "| pretrained | 0.5 |" in report and "| random | 1 |" in report
    assert "pretrained init, 1 of the labels" in result.output


def test_segment_sweep_trains_per_seed_on_a_share_of_the_images(tmp_path: Path) -> None:
    run = exported_run(tmp_path / "run", bands=3)
    data = write_segmentation_folder(tmp_path / "seg", count=8, size=48)
    args = ["transfer", str(run), "--task", "segment", "--data", str(data), "--protocol",
            "finetune", "--epochs", "1", "--tile", "32", "--batch-size", "4",
            "--accelerator", "cpu", "--seeds", "2", "--label-fractions", "0.4,1.0"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run-segment-finetune-label-efficiency" /
                          "metrics.json").read_text())  # fmt: skip
    share, full = metrics["curves"]["pretrained"]
    assert metrics["metric"] == "mIoU" and share["labels"] < full["labels"]
    assert all(0 <= value <= 1 for value in share["per_seed"] + full["per_seed"])
    assert share["low"] is not None and share["low"] <= share["mean"] <= share["high"]


def test_a_sweep_started_again_reuses_finished_runs_and_trains_only_the_rest(
    tmp_path: Path,
) -> None:
    plan = SweepPlan((0.5, 1.0), seeds=2)
    trained: list[tuple[str, float, int]] = []

    def crashing_after_three(baseline: str, fraction: float, seed: int) -> tuple[float, int]:
        if len(trained) == 3:
            raise KeyboardInterrupt  # the machine goes down during the fourth run
        trained.append((baseline, fraction, seed))
        return fraction + seed / 10, int(fraction * 10)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, "pretrained", crashing_after_three, SweepJournal(tmp_path, {}), "acc")
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 3
    with open(tmp_path / "runs.jsonl", "a") as lines:
        lines.write('{"init": "pretrained", "fract')  # a line cut short by the crash
    trained.clear()
    journal = SweepJournal(tmp_path, {})
    curves = run_sweep(plan, "pretrained", crashing_after_three, journal, "acc")
    assert trained == [("pretrained", 1.0, 1)] and journal.reused == 3
    assert [p["per_seed"] for p in curves["pretrained"]] == [[0.5, 0.6], [1.0, 1.1]]
    last = (tmp_path / "runs.jsonl").read_text().splitlines()[-1]
    assert json.loads(last) == {"init": "pretrained", "fraction": 1.0, "seed": 1,
                                     "score": 1.1, "labels": 10}  # fmt: skip


def test_a_sweep_folder_of_other_settings_is_refused(tmp_path: Path) -> None:
    SweepJournal(tmp_path, {"lr": 0.001})
    with pytest.raises(DomainSSLError, match="other settings"):
        SweepJournal(tmp_path, {"lr": 0.01})


def test_random_from_draws_an_earlier_random_sweep_beside_the_pretrained_curve(
    tmp_path: Path,
) -> None:
    run = exported_run(tmp_path / "run")
    data = write_chip_folder(tmp_path / "chips", per_class=10)
    base = ["transfer", str(run), "--data", str(data), "--accelerator", "cpu", "--seeds", "2",
            "--label-fractions", "0.5,1.0"]  # fmt: skip
    random_out, out = tmp_path / "random", tmp_path / "pretrained"
    result = runner.invoke(app, [*base, "--baseline", "random", "--out", str(random_out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*base, "--random-from", str(random_out), "--out", str(out)])
    assert result.exit_code == 0, result.output
    earlier = json.loads((random_out / "metrics.json").read_text())["curves"]["random"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["curves"]) == {"pretrained", "random"}
    assert metrics["curves"]["random"] == earlier
    assert f"comes from `{random_out}`" in (out / "report.md").read_text()
    both = runner.invoke(app, [*base, "--random-from", str(random_out), "--compare-random"])
    assert both.exit_code == 2 and "--random-from" in both.output
    empty = runner.invoke(app, [*base, "--random-from", str(tmp_path / "chips")])
    assert empty.exit_code == 2 and "no random-init curve" in empty.output


def test_frozen_warmup_is_refused_outside_fine_tuning_and_outside_0_to_1(tmp_path: Path) -> None:
    run = exported_run(tmp_path / "run", bands=3)
    data = write_segmentation_folder(tmp_path / "seg", count=4, size=32)
    base = ["transfer", str(run), "--data", str(data), "--accelerator", "cpu", "--task", "segment"]
    linear = runner.invoke(app, [*base, "--protocol", "linear", "--frozen-warmup", "0.3"])
    assert linear.exit_code == 2 and "--frozen-warmup" in linear.output
    whole = runner.invoke(app, [*base, "--protocol", "finetune", "--frozen-warmup", "1.0"])
    assert whole.exit_code == 2 and "(0, 1)" in whole.output
