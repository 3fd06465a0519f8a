"""Handing freed memory back to the system (torch-free: the batcher imports it before torch is)."""

from __future__ import annotations


def release_freed_memory() -> None:
    """Hand the float32 temporaries of quantising back to the system. glibc keeps freed blocks of a few MB in its
    heap; measured here, the process held 580-820 MB after loading TRACE-mini in int8 without this, 580 MB with
    it. A no-op where the C library is not glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
