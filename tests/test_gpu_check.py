"""The prepared GPU check runs end to end in its --dry form on the CPU, so it cannot rot
between the sessions that are lent a GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from domainssl.paths import REPO_ROOT


def test_gpu_check_dry_runs_every_step_and_writes_its_reports(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = ["bash", str(REPO_ROOT / "bench" / "gpu_check.sh"), "--dry", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failures = {s["name"]: s["error"] for s in report["steps"] if not s["ok"]}
    assert result.returncode == 0 and not failures, failures or result.stdout[-3000:]
    names = [step["name"] for step in report["steps"]]
    scene_level = ["simclr", "moco", "byol", "simsiam", "densecl", "dino", "ibot", "mae"]
    for method in [*scene_level, "orl", "mmgl"]:
        assert f"pretrain {method} bf16-mixed" in names
    rates = next(s for s in report["steps"] if s["name"].startswith("throughput"))["details"]
    assert rates["ours_images_per_s"] > 0 and rates["lightly_images_per_s"] > 0
    infer = next(s for s in report["steps"] if s["name"].startswith("infer GeoTIFF"))
    assert infer["details"]["share_of_model_rate"] > 0
    assert {"chips/1", "scene_windows/1", "slide_patches/1"} <= set(report["loaders"])
    assert "| step | ok | seconds | result |" in (tmp_path / "gpu_check.md").read_text()
