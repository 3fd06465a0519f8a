"""The C heap of a serving process: freed memory handed back to the system, and how many heaps glibc keeps
(torch-free: the batcher and app.py import it before torch is)."""

from __future__ import annotations

import os

M_ARENA_MAX = -8  # glibc's mallopt parameter: the most malloc arenas (heaps) a process keeps


def release_freed_memory() -> None:
    """Hand the float32 temporaries of quantising back to the system. glibc keeps freed blocks of a few MB in its
    heap; measured here, the process held 580-820 MB after loading TRACE-mini in int8 without this, 580 MB with
    it. A no-op where the C library is not glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def limit_malloc_arenas(count: int = 2) -> bool:
    """Let glibc keep at most `count` malloc arenas from now on (unless MALLOC_ARENA_MAX is set: then that).

    glibc gives a thread that finds the heap busy an arena of its own, up to 8 per core, and each keeps the memory
    freed in it. A server whose searches run in a pool of threads ends up holding their leftovers: measured here
    (16 clients for 20 s, `bench/serving.py`), the app held 1,047-1,109 MB after the load test with glibc's
    default and 1,020-1,024 MB with 1 or 2 arenas, the same throughput. Whether the limit was set (False where the
    C library is not glibc, or the variable is set)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False
