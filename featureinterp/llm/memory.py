"""Process memory: fewer glibc malloc arenas for the explain stage's threads.

glibc gives each thread that allocates its own malloc arena (up to 8 per core); the explain stage
runs features, tree children and simulations on several threads, and memory freed in one arena is
not reused by another, so the process's resident size grows with the thread count rather than
with what it holds. Measured on the embedded default (2 cores, docs/benchmarks.md, `end_to_end`): peak RSS
3.34 GiB with glibc's default, 3.06 GiB with this cap applied at start-up, 2.84 GiB with
``MALLOC_ARENA_MAX=2`` exported before the process starts (it also covers what imports allocate).
So the ``featureinterp`` console script sets the variable and re-executes itself before anything
heavy is imported (:func:`arena_environment`, ``featureinterp_assets/launch.py``); the in-process
cap remains for callers of ``cli.main`` from Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

__all__ = ["ARENAS", "arena_environment", "limit_malloc_arenas", "release_free_memory"]

ARENAS = 2
"""Arenas for the whole process: one per core of the 2-core machine the embedded default targets."""

_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads created from now on; True when applied. A value the
    user set in ``MALLOC_ARENA_MAX`` wins (glibc read it at start-up); other C libraries (musl,
    macOS) have no arenas and are left alone."""
    if arenas < 1:
        raise ValueError(f"arenas must be at least 1, got {arenas}")
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))



@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, opened once (``release_free_memory`` runs after every partition)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_free_memory(collect: bool = True) -> bool:
    """Collect garbage (``collect``), then hand the heap's free pages back to the OS (glibc
    ``malloc_trim``); True when glibc did.

    Why: ``featureinterp run`` executes its runs one after another in one process, and each run's
    tensors (a local explainer's stored prompt caches, simulator batches) are freed into the malloc
    heap when it ends. glibc keeps most of that as free-but-resident memory, scattered between
    live blocks, so the next run's allocations land elsewhere and the resident size ratchets up
    run by run; trimming at each run boundary lets the peak follow what is live instead. The
    same holds between the partitions of one run (each explanation's prompt caches are freed when
    it is stored), where reference counting has already freed them: ``collect=False`` skips the
    garbage collector's pass there."""
    import gc

    if collect:
        gc.collect()
    trim = getattr(_libc(), "malloc_trim", None)  # absent outside glibc (musl, macOS)
    return bool(trim(0)) if trim is not None else False


def arena_environment(environ: dict[str, str], platform: str) -> dict[str, str] | None:
    """The environment to re-execute the command with so glibc caps its arenas from the first
    allocation, or None when there is nothing to do: the user chose a value (theirs wins), or the
    platform is not Linux (no glibc arenas). The variable is inherited by the processes the
    command starts, so Dagster's run workers get the cap too."""
    if not platform.startswith("linux") or environ.get("MALLOC_ARENA_MAX"):
        return None
    return {**environ, "MALLOC_ARENA_MAX": str(ARENAS)}
