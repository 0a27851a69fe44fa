"""Process memory: fewer glibc malloc arenas for the explain stage's threads.

glibc gives each thread that allocates its own malloc arena (up to 8 per core); the explain stage
runs features, tree children and simulations on several threads, and memory freed in one arena is
not reused by another, so the process's resident size grows with the thread count rather than
with what it holds. Measured on the embedded default (2 cores, README "Benchmarks"): peak RSS
3.34 GiB with glibc's default, 3.06 GiB with this cap applied at start-up, 2.84 GiB with
``MALLOC_ARENA_MAX=2`` exported before the process starts (it also covers what imports allocate).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["limit_malloc_arenas"]

_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for threads created from now on; True when applied. A value the
    user set in ``MALLOC_ARENA_MAX`` wins (glibc read it at start-up); other C libraries (musl,
    macOS) have no arenas and are left alone."""
    if arenas < 1:
        raise ValueError(f"arenas must be at least 1, got {arenas}")
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
