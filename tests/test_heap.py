"""The C heap of the serving process: glibc's malloc arenas are limited (`trace_core.heap.limit_malloc_arenas`)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A process that runs 8 threads at once, each allocating and freeing through the C library, then counts the
# heaps glibc reports (malloc_info's <heap> elements).
CHILD = r"""
import ctypes, sys, threading
sys.path.insert(0, sys.argv[1])
from trace_core.heap import limit_malloc_arenas
if sys.argv[2] == "limit":
    assert limit_malloc_arenas(1)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    for _ in range(3000):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
out = libc.fopen(sys.argv[3].encode(), b"w")
libc.malloc_info(0, out)
libc.fclose(out)
"""


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "malloc_info")
    except OSError:
        return False


def _heaps(tmp_path: Path, mode: str) -> int:
    report = tmp_path / f"{mode}.xml"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    subprocess.run([sys.executable, "-c", CHILD, str(ROOT), mode, str(report)], check=True, env=env, timeout=120)
    return report.read_text().count("<heap nr=")


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")
def test_threads_share_the_limited_heaps(tmp_path):
    assert _heaps(tmp_path, "default") > 1  # glibc's default: threads get heaps of their own
    assert _heaps(tmp_path, "limit") == 1


def test_a_set_variable_wins(monkeypatch):
    from trace_core.heap import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(2) is False  # glibc read the variable at start; it is left as it is
