"""Safe loading: checkpoints and weights load without running pickled code.

A planted malicious pickle (its ``__reduce__`` creates a marker file) is refused with a
clear message, as backbone weights and as the ``last.ckpt`` of ``--resume``; the marker
never appears. A scan of the package keeps every loader on the safe path.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import domainssl
from domainssl.checkpointing import LAST_CHECKPOINT
from domainssl.config import load_config, to_yaml
from domainssl.errors import DomainSSLError
from domainssl.models.init_weights import resolve_init
from domainssl.pretrain import pretrain


class Planted:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path, checkpoint: bool = False) -> None:
    """A torch file that would run ``Planted`` code on a plain ``torch.load``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"conv1.weight": Planted(marker)}
    torch.save({"global_step": 1, "state_dict": payload} if checkpoint else payload, path)


def test_plant_really_runs_code_when_loaded_unsafely(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    plant(tmp_path / "evil.pth", marker)
    torch.load(tmp_path / "evil.pth", weights_only=False)  # what the refusal prevents
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".ckpt", ".bin"])
def test_malicious_backbone_weights_are_refused(suffix: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    plant(tmp_path / f"evil{suffix}", marker)
    with pytest.raises(DomainSSLError, match="refused"):
        resolve_init(str(tmp_path / f"evil{suffix}"))
    assert not marker.exists()


def test_malicious_resume_checkpoint_is_refused(tif_chips: Path, tmp_path: Path) -> None:
    from conftest import FAST

    overrides = {"data.path": str(tif_chips), "out": str(tmp_path)}
    config = load_config("eo", "simclr", overrides=overrides, sets=FAST)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(config))
    marker = tmp_path / "marker"
    plant(run_dir / LAST_CHECKPOINT, marker, checkpoint=True)
    with pytest.raises(DomainSSLError, match=r"last\.ckpt holds pickled objects.*refused"):
        pretrain(config, resume=run_dir, progress_bar=False)
    assert not marker.exists()
    assert not (run_dir / "backbone.safetensors").exists()


def test_package_loads_only_through_safe_paths() -> None:
    """Every torch.load is weights-only; no pickle, unsafe YAML or pickled numpy arrays."""
    root = Path(domainssl.__file__).parent
    unsafe = {
        "torch.load without weights_only=True": re.compile(
            r"torch\.load\((?![^)]*weights_only=True)"
        ),
        "pickle": re.compile(r"\bpickle\.loads?\(|\bimport dill\b"),
        "yaml.load / unsafe_load": re.compile(r"yaml\.(load|unsafe_load|full_load)\("),
        "np.load with allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    }
    found = [
        f"{path.relative_to(root)}: {problem}"
        for path in root.rglob("*.py")
        for problem, pattern in unsafe.items()
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert not found, found
