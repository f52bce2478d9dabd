"""Label efficiency: the same transfer on a share of the training labels, over seeds, with
95% confidence intervals, a table and a curve (``--seeds``, ``--label-fractions``,
``--compare-random``).

For each fraction and seed a subset of the training split is drawn with that seed
(stratified by class for classification, by image for segmentation; at least one image per
class), the model is trained with that seed and scored on the fixed test split. Intervals
are Student-t intervals of the mean over seeds (``mean ± t(0.975, n-1) · s / sqrt(n)``).

A sweep is crash-safe: each finished run is appended to ``runs.jsonl`` in the output folder,
and the same command run again (same settings) reuses those runs and trains only the rest.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn.model_selection import train_test_split

from domainssl.errors import DomainSSLError
from domainssl.io import atomic_write_text
from domainssl.reports import markdown_table, save_figure, write_report


@dataclass(frozen=True)
class SweepPlan:
    """Which label fractions, how many seeds, and whether random init runs beside."""

    fractions: tuple[float, ...] = (1.0,)
    seeds: int = 1
    compare_random: bool = False
    random_from: Path | None = None
    """A finished random-init sweep folder whose curve is drawn beside (instead of training)."""

    @property
    def is_single_run(self) -> bool:
        """One seed on all labels without a comparison: the plain transfer."""
        return (self.seeds == 1 and self.fractions == (1.0,) and not self.compare_random
                and self.random_from is None)  # fmt: skip


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.01,0.1,1.0"`` -> (0.01, 0.1, 1.0); each in (0, 1]."""
    try:
        fractions = tuple(sorted({float(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise DomainSSLError(
            f"--label-fractions {text!r}: give shares of the training labels, e.g. 0.01,0.1,1.0."
        ) from None
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise DomainSSLError(f"--label-fractions {text!r}: every share must be in (0, 1].")
    return fractions


def labeled_subset(
    train: np.ndarray, fraction: float, seed: int, strata: np.ndarray | None = None
) -> np.ndarray:
    """``fraction`` of the indices ``train`` (at least one per stratum), drawn with ``seed``;
    stratified by ``strata`` (one key per index in ``train``) when given."""
    if fraction >= 1.0:
        return np.sort(train)
    count = max(round(fraction * len(train)), 1 if strata is None else len(np.unique(strata)))
    if count >= len(train):
        return np.sort(train)
    chosen, _ = train_test_split(train, train_size=count, stratify=strata, random_state=seed)
    return np.sort(chosen)


def t_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a 95% Student-t interval; no interval from one value."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None, None
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    return mean, float(mean - half), float(mean + half)


RunOne = Callable[[str, float, int], tuple[float, int]]
"""(baseline, fraction, seed) -> (test score, training labels used)."""

JOURNAL = "runs.jsonl"
SWEEP_SETTINGS = "sweep_settings.json"


class SweepJournal:
    """The finished runs of a sweep, one JSON line each in ``out_dir/runs.jsonl``, written
    as each run ends. A sweep started again into the same folder with the same settings
    (``sweep_settings.json``) takes them from here instead of training them again."""

    def __init__(self, out_dir: Path, settings: dict[str, Any]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / JOURNAL
        recorded = out_dir / SWEEP_SETTINGS
        text = json.dumps(settings, indent=2, sort_keys=True, default=str)
        if recorded.exists() and recorded.read_text() != text:
            raise DomainSSLError(
                f"{out_dir} holds runs of a sweep with other settings (see {recorded}): pass "
                "another --out, or delete that folder to start again."
            )
        atomic_write_text(recorded, text)
        self.done = self._read()
        self.reused = 0

    def _read(self) -> dict[tuple[str, float, int], tuple[float, int]]:
        done: dict[tuple[str, float, int], tuple[float, int]] = {}
        if not self.path.exists():
            return done
        text = self.path.read_text()
        for line in text.splitlines():
            try:
                run = json.loads(line)
                done[(run["init"], run["fraction"], run["seed"])] = (run["score"], run["labels"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a crash: that run is trained again
        if text and not text.endswith("\n"):
            with open(self.path, "a") as journal:
                journal.write("\n")  # the next record starts on a line of its own
        return done

    def run(self, init: str, fraction: float, seed: int, run_one: RunOne) -> tuple[float, int]:
        """The recorded result of this run, else ``run_one``'s, recorded before returning."""
        key = (init, fraction, seed)
        if key in self.done:
            self.reused += 1
            return self.done[key]
        score, labels = run_one(init, fraction, seed)
        record = {"init": init, "fraction": fraction, "seed": seed, "score": score,
                  "labels": labels}  # fmt: skip
        with open(self.path, "a") as journal:
            journal.write(json.dumps(record) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        self.done[key] = (score, labels)
        return score, labels


def read_random_curve(folder: Path, metric: str) -> list[dict[str, Any]]:
    """The random-init curve of a finished label-efficiency folder (its metrics.json)."""
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        curve = metrics["curves"]["random"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise DomainSSLError(
            f"--random-from {folder}: no random-init curve in {path}. Give the output folder of "
            "a sweep run with --baseline random (or --compare-random) and --seeds / "
            "--label-fractions."
        ) from None
    if metrics.get("metric") != metric:
        raise DomainSSLError(
            f"--random-from {folder} measured {metrics.get('metric')}, this sweep {metric}: "
            "give a folder of the same task."
        )
    return list(curve)


def run_sweep(
    plan: SweepPlan, baseline: str, run_one: RunOne, journal: SweepJournal, metric: str
) -> dict[str, list[dict[str, Any]]]:
    """Per baseline (the given one, and random when compared), per fraction: the scores of
    every seed, the labels used, the mean and the interval. Runs already in ``journal`` are
    not trained again; ``plan.random_from`` supplies the random curve from an earlier sweep."""
    borrowed = None if plan.random_from is None else read_random_curve(plan.random_from, metric)
    baselines = [baseline] + (["random"] if plan.compare_random and baseline != "random" else [])
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in baselines:
        points = []
        for fraction in plan.fractions:
            runs = [journal.run(name, fraction, seed, run_one) for seed in range(plan.seeds)]
            mean, low, high = t_interval([score for score, _ in runs])
            points.append({
                "fraction": fraction, "labels": runs[0][1], "per_seed": [s for s, _ in runs],
                "mean": mean, "low": low, "high": high,
            })  # fmt: skip
        curves[name] = points
    if borrowed is not None:
        curves["random"] = borrowed
    return curves


def save_curve_png(curves: dict[str, list[dict[str, Any]]], metric: str, out: Path) -> None:
    """The metric against the training labels used (log scale), one line per baseline, with
    its 95% interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        labels = [p["labels"] for p in points]
        axes.plot(labels, [p["mean"] for p in points], marker="o", label=f"{name} init")
        if all(p["low"] is not None for p in points):
            axes.fill_between(labels, [p["low"] for p in points], [p["high"] for p in points],
                              alpha=0.2)  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("training labels used (images)")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    save_figure(figure, out)


def sweep_facts(plan: SweepPlan, journal: SweepJournal, seconds: float) -> list[str]:
    """Report lines on seeds, intervals, time, reused runs and a borrowed random curve."""
    facts = [f"{plan.seeds} seeds per point; 95% Student-t intervals; took {seconds:.0f} s."]
    if journal.reused:
        facts.append(f"{journal.reused} runs were taken from an earlier start of this sweep "
                     f"({JOURNAL}).")  # fmt: skip
    if plan.random_from is not None:
        facts.append(f"The random-init curve comes from `{plan.random_from}` (not retrained).")
    return facts


def write_sweep_outputs(
    out_dir: Path,
    curves: dict[str, list[dict[str, Any]]],
    metric: str,
    title: str,
    facts: list[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json, label_efficiency.png and report.md of a sweep; returns the metrics."""
    seeds = len(next(iter(curves.values()))[0]["per_seed"])
    metrics = {"metric": metric, "interval": "95% Student-t over seeds", "seeds": seeds,
               "curves": curves, **extra}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    save_curve_png(curves, metric, out_dir / "label_efficiency.png")

    def cell(point: dict[str, Any]) -> str:
        if point["low"] is None:
            return f"{point['mean']:.4f}"
        return f"{point['mean']:.4f} ± {point['high'] - point['mean']:.4f}"

    rows = [
        (name, f"{p['fraction']:g}", p["labels"], cell(p),
         ", ".join(f"{v:.4f}" for v in p["per_seed"]))
        for name, points in curves.items() for p in points
    ]  # fmt: skip
    body = markdown_table(["init", "fraction", "labels", f"{metric} (mean ± 95% t)", "per seed"],
                          rows)  # fmt: skip
    write_report(out_dir / "report.md", title, facts, body,
                 [("label efficiency", "label_efficiency.png")])  # fmt: skip
    return metrics
