"""glibc's malloc told to keep freed memory, for CPU inference.

A network's activations on a batch of tiles take hundreds of MB each. glibc serves requests
above its mmap threshold (32 MB at most) with fresh pages from the kernel and hands them
back on free, so every forward pass page-faults and zeroes all its activations again: on
the Landsat-8 segmenter (ResNet-18 UNet, 256 px tiles, batch 16) that cost about a third
of the CPU time (bench/results.md, `infer-speed`). Serving every request from the heap and
never trimming it keeps those pages for the following batches: after a few batches the
heap reaches a working size and stays there, instead of being returned to the kernel and
faulted in again every batch (peak memory: bench/results.md, `infer-speed`).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1
"""Free bytes at the top of the heap before glibc returns them (mallopt takes an int)."""


def keep_freed_memory() -> bool:
    """Make this process (and the workers it forks later) reuse freed memory instead of
    returning it to the kernel. Returns False where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
