"""What a run folder records about its origin: package versions and git commit."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from domainssl.io import atomic_write_text
from domainssl.paths import REPO_ROOT

PACKAGES = [
    "domainssl",
    "torch",
    "torchvision",
    "lightning",
    "timm",
    "torchgeo",
    "rasterio",
    "kornia",
    "numpy",
    "pydantic",
]


def git_commit() -> str:
    """The repository's commit (with ``-dirty`` when there are local changes), or unknown."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty.strip() else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_run_info(run_dir: Path) -> None:
    """``environment.json``: versions, git commit, Python, platform and command line."""
    info = {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": sys.argv,
    }
    atomic_write_text(run_dir / "environment.json", json.dumps(info, indent=2))
