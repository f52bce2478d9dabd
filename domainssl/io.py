"""Atomic file writes: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""What ``open`` would give a new file; temporary files (0600) get it before their rename."""


def temporary_beside(path: Path) -> Path:
    """A new empty file beside ``path`` with the permissions of a normally created file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(handle, FILE_MODE)
    os.close(handle)
    return Path(name)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    tmp = temporary_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def staged(finals: list[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside ``finals``, renamed onto them only when the block succeeds;
    on any error or interrupt they are removed and no final name is touched. Each is an
    empty file; the block may replace one by a folder (a Zarr store)."""
    temps: list[Path] = []
    try:
        for final in finals:
            temps.append(temporary_beside(final))
        yield temps
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
    finally:
        for temp in temps:
            if temp.is_dir():
                shutil.rmtree(temp)
            else:
                temp.unlink(missing_ok=True)
