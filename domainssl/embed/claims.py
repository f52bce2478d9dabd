"""Who embeds which item: a process's shard of the item list, and lock files that make sure
no item is computed twice by overlapping shards, restarted jobs or several nodes.

A lock is a file created with ``O_EXCL`` (atomic on local and NFS v3+ file systems) holding
its owner's host, pid and start time; the owner touches it while it works. A lock is stale,
and taken over, when its owner is a dead process of this host, or when it has not been
touched for ``STALE_AFTER_S`` (an owner on another host that died).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from domainssl.errors import DomainSSLError

HEARTBEAT_S = 30.0
T = TypeVar("T")
STALE_AFTER_S = 600.0
"""A lock untouched for this long belongs to a dead process on some host."""


@dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count``: it embeds items ``index``, ``index + count``, ..."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` with 0 <= I < N."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            index, count = -1, 0
        if not 0 <= index < count:
            raise DomainSSLError(f"--shard {text!r}: write I/N with 0 <= I < N, e.g. 0/4.")
        return cls(index, count)

    @classmethod
    def from_environment(cls) -> Shard:
        """The launcher's rank and world size: torchrun's ``RANK``/``WORLD_SIZE``, then
        srun's ``SLURM_PROCID``/``SLURM_NTASKS``; 0/1 without a launcher."""
        for rank, size in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
            if rank in os.environ and size in os.environ:
                return cls.parse(f"{os.environ[rank]}/{os.environ[size]}")
        return cls(0, 1)

    def take(self, items: list[T]) -> list[T]:
        """This shard's share of ``items``."""
        return items[self.index :: self.count]


def local_device_index(visible: int) -> int:
    """The GPU of this process among the ``visible`` ones: torchrun's ``LOCAL_RANK``, else
    srun's ``SLURM_LOCALID``, else 0; modulo ``visible``, as srun with ``--gpus-per-task 1``
    leaves each task one visible GPU whatever its local id."""
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    return local % max(visible, 1)


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(lock: Path) -> bool:
    """Whether ``lock``'s owner is gone (see the module doc)."""
    try:
        owner = json.loads(lock.read_text())
        touched = lock.stat().st_mtime
    except (OSError, ValueError):
        return False  # being written or just removed: not ours to judge yet
    if owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", -1))):
        return True
    return time.time() - touched > STALE_AFTER_S


def _create(lock: Path) -> bool:
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        json.dump(_owner(), file)
    return True


def try_claim(lock: Path) -> bool:
    """Create ``lock`` for this process; a stale lock is taken over. False: someone else
    holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    if _create(lock):
        return True
    if not is_stale(lock):
        return False
    # Move the stale lock aside: of several processes taking it over, one rename succeeds.
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    aside.unlink(missing_ok=True)
    return _create(lock)


def release(lock: Path) -> None:
    """Remove this process's ``lock``."""
    lock.unlink(missing_ok=True)


@contextmanager
def heartbeat(lock: Path) -> Iterator[None]:
    """Touch ``lock`` every ``HEARTBEAT_S`` while the body runs, so that other hosts see its
    owner is alive."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            try:
                os.utime(lock)
            except OSError:
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
