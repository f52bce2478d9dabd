"""glibc's malloc told to keep freed memory for CPU inference, and to hand back the pages of
what is free once in a while.

A network's activations on a batch of tiles take hundreds of MB each. glibc serves requests
above its mmap threshold (32 MB at most) with fresh pages from the kernel and hands them
back on free, so every forward pass page-faults and zeroes all its activations again: on
the Landsat-8 segmenter (ResNet-18 UNet, 256 px tiles, batch 16) that cost about a third
of the CPU time (bench/results.md, `infer-speed`). Serving every request from the heap and
never trimming it keeps those pages for the following batches: after a few batches the
heap reaches a working size and stays there, instead of being returned to the kernel and
faulted in again every batch (peak memory: bench/results.md, `infer-speed`).

A heap that is never trimmed can still fragment. In some runs with reader processes the
free space got chopped into holes too small for the largest activation: the heap grew by
one activation (~50 MB) per batch while the memory in use stayed at 274 MB (ResNet-18,
batches of 16: the heap went from 430 MB to 1.2 GB and the process from 1.25 to 1.9 GB;
bench/results.md, `embed-speed-notes`). :class:`ResidentWatch` hands the pages of free
blocks back (``malloc_trim``) whenever the process has grown by a step over its size after
the first batch: the batches that follow fault in only what they touch. A run whose memory
does not grow never trims.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1
"""Free bytes at the top of the heap before glibc returns them (mallopt takes an int)."""


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc's (None on other systems, musl and the like)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Make this process (and the workers it forks later) reuse freed memory instead of
    returning it to the kernel. Returns False where malloc is not glibc's."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def release_freed_memory() -> bool:
    """Return the pages of every free block of the heap to the kernel (glibc's
    ``malloc_trim``). Returns whether any memory was released (False where malloc is not
    glibc's)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def resident_bytes() -> int | None:
    """This process's resident memory (bytes); None where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


class ResidentWatch:
    """Releases the heap's free pages whenever this process's resident memory exceeds its
    size at construction (the baseline) by ``step`` bytes. When releasing cannot bring it
    back under, the memory is in use: the baseline moves up to it, so a run that grows for
    real is not trimmed again every batch."""

    def __init__(self, step: int = 64 * 2**20) -> None:
        self.step, self.baseline = step, resident_bytes()

    def check(self) -> bool:
        """Release the free pages if resident memory grew by a step. Whether it did."""
        size = resident_bytes()
        if size is None or self.baseline is None or size < self.baseline + self.step:
            return False
        release_freed_memory()
        after = resident_bytes() or size
        if after >= self.baseline + self.step:
            self.baseline = after
        return True
