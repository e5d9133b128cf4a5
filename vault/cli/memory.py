"""Keep glibc from hoarding freed multi-megabyte buffers (chunks, packs) in per-thread arenas.

glibc raises its mmap threshold each time a large mmapped block is freed, after which 8-16 MiB buffers
come from arenas and are rarely given back: peak RSS then doubles with worker threads. A fixed threshold
makes every buffer of 1 MiB or more an mmap that is returned on free; two arenas bound fragmentation.
Called once by the CLI entry point (a library user keeps control of their own process).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3


def _mallopt():
    """glibc's mallopt, from the symbols already loaded (``find_library`` would run ldconfig/gcc: ~0.2 s)."""
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        pass
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None


def tune_malloc(threshold: int = 1 << 20, arenas: int = 2) -> bool:
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_ARENA_MAX, arenas))
