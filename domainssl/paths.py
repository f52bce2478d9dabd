"""Where the repository's configs and embedded demo data live."""

from pathlib import Path

from domainssl.errors import DomainSSLError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"
DATASETS_DIR = REPO_ROOT / "datasets"


def repo_resource(path: Path) -> Path:
    """Return ``path`` if it exists, else explain that the package needs its repository."""
    if not path.exists():
        raise DomainSSLError(
            f"{path} not found. domainssl reads its configs and demo data from the repository "
            "it was installed from: install it with `pip install -e .` inside a clone."
        )
    return path


SKIPPED_INPUTS = "skipped_inputs.txt"
"""Run folder file listing the unreadable inputs a run left out (absent when none)."""
