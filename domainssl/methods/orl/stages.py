"""ORL (Xie et al. 2021) in one command: three stages under one run folder and budget.

``<run>/stage1``: image-level BYOL (a full pretrain run; or ``method.orl_init``, an existing
run). ``<run>/stage2``: image embeddings, kNN, proposals and mined object pairs
(:mod:`domainssl.methods.orl.mining`), made once by the stage-3 data module's preparation.
``<run>`` itself: stage 3, object-level BYOL started from the stage-1 backbone, whose
export is the run's export. ``trainer.max_time`` is split by ``method.orl_stage_shares``;
time a stage leaves unused moves to the next.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from domainssl.checkpointing import LAST_CHECKPOINT
from domainssl.config import RunConfig, build_config, set_dotted
from domainssl.console import say
from domainssl.errors import DomainSSLError
from domainssl.export import WEIGHTS
from domainssl.methods.byol import BYOLConfig
from domainssl.methods.orl.module import ORLConfig
from domainssl.methods.registry import FitStage

MIN_STAGE_S = 5.0  # a stage whose budget is spent still gets this long


def _report(message: str) -> None:
    say(message)


def _stage_config(config: RunConfig, changes: Mapping[str, object]) -> RunConfig:
    tree = config.model_dump(mode="json")
    for key, value in changes.items():
        set_dotted(tree, key, value)
    return build_config(tree, "ORL stage config")


def _budget(seconds: float | None) -> str | None:
    return None if seconds is None else f"00:00:{max(seconds, MIN_STAGE_S):.1f}"


def finished_run(spec: str | None) -> str | None:
    """``spec`` when it is a finished domainssl pretrain run (then it is ORL's stage 1)."""
    return spec if spec is not None and (Path(spec) / WEIGHTS).is_file() else None


def _settings(config: RunConfig) -> ORLConfig:
    assert isinstance(config.method, ORLConfig)
    return config.method


def run_orl_stages(config: RunConfig, run_dir: Path, resume: bool, fit: FitStage) -> None:
    """Run (or resume) ORL's stages in ``run_dir``; stage 3 writes the export.

    Args:
        config: a run config with ``method.name`` orl.
        run_dir: the run folder; on resume, finished stages are skipped.
        resume: go on from the checkpoints an interrupted run left.
        fit: trains stage 1 (BYOL) and stages 2 + 3 (ORL, mining in its data preparation).
    """
    start = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    total = config.trainer.max_time_s

    def left(share_end: float) -> float | None:
        """Seconds until the end of the stages whose shares sum to ``share_end``."""
        return None if total is None else start + total * share_end - time.monotonic()

    stage1 = _stage_one(config, run_dir, _budget(left(_settings(config).orl_stage_shares[0])), fit)
    stages23 = _stage_config(
        config,
        {"out": str(run_dir.parent), "name": run_dir.name, "model.init": str(stage1 / WEIGHTS),
         "trainer.max_time": _budget(left(1.0)), "optimizer.init_lr_scale": 1.0,
         "optimizer.init_warmup_fraction": config.optimizer.warmup_fraction},
    )  # fmt: skip
    fit(stages23, run_dir, resume and (run_dir / LAST_CHECKPOINT).is_file())


def _stage_one(config: RunConfig, run_dir: Path, budget: str | None, fit: FitStage) -> Path:
    """The stage-1 run folder: ``method.orl_init``, a finished one, or a new BYOL run."""
    orl_init = _settings(config).orl_init or finished_run(config.model.init)
    if orl_init is not None:
        stage1 = Path(orl_init)
        if not (stage1 / WEIGHTS).is_file():
            raise DomainSSLError(
                f"method.orl_init {stage1} holds no {WEIGHTS}: give the folder of a finished "
                "`domainssl pretrain` run (or drop --init to train stage 1)."
            )
        _report(f"stage 1/3: reusing {stage1}")
        return stage1
    stage1 = run_dir / "stage1"
    if (stage1 / WEIGHTS).is_file():
        _report(f"stage 1/3: already done ({stage1})")
        return stage1
    _report(f"stage 1/3: image-level BYOL (budget {budget or 'epochs'})")
    byol = {key: value for key, value in config.method.model_dump(mode="json").items()
            if key in BYOLConfig.model_fields}  # fmt: skip
    changes = {"method": {**byol, "name": "byol"}, "out": str(run_dir), "name": "stage1",
               "trainer.max_time": budget}  # fmt: skip
    fit(_stage_config(config, changes), stage1, (stage1 / LAST_CHECKPOINT).is_file())
    return stage1
