"""Does the fused step stream its int8 weights faster from transparent huge pages than from 4 KB pages?

    PYTHONPATH=. python scripts/huge_page_probe.py

The 211 int8 matrices of one SmolLM2-135M decoding step (30 layers: q, k, v, o, gate, up, down, then the 49,152-row
output head; random weights of the same shapes), each multiplied by one quantised vector with the fused step's
kernel (`fused_decode._matvec_int8`), in step order, from three layouts: the matrices as separate arrays (4 KB
pages, as torch allocates them), one buffer on 4 KB pages, and one buffer on transparent huge pages in step order
(`fused_decode.huge_page_buffer`, what `move_to_huge_pages` makes). Prints ms per step and GB/s, medians of 30,
three rounds alternated, and a plain single-thread read of 1 GiB on each kind of page (the bound bench/precision.py
takes). Measured here (2 cores, 2026-12-04, four runs): 5.7-6.3 ms (21-24 GB/s) separate or on 4 KB pages,
4.6-5.0 ms (27-29 GB/s) on huge pages; the plain read 26-32 GB/s on 4 KB pages, 30-33 on huge pages.
"""

from __future__ import annotations

import mmap
import re
import statistics
import time

import numba as nb
import numpy as np
import torch
from numba.typed import List

from bench.precision import memory_gbps
from trace_core.backbones.fused_decode import GROUP, _matvec_int8, _quantise, huge_page_buffer

HIDDEN, INTER, LAYERS, VOCAB = 576, 1536, 30, 49152
SHAPES = [(576, HIDDEN), (192, HIDDEN), (192, HIDDEN), (HIDDEN, 576), (INTER, HIDDEN), (INTER, HIDDEN),
          (HIDDEN, INTER)] * LAYERS + [(VOCAB, HIDDEN)]


@nb.njit(nogil=True)
def _products(weights, scales, xq, xs, out):
    for k in range(len(weights)):
        w = weights[k]
        _matvec_int8(w, scales[k], xq[:, : w.shape[1]], xs, out[k])


def _in_one_buffer(arrays: list[np.ndarray], buffer: np.ndarray) -> list[np.ndarray]:
    views, at = [], 0
    for a in arrays:
        view = buffer[at : at + a.nbytes].view(np.int8).reshape(a.shape)
        view[...] = a
        views.append(view)
        at += -(-a.nbytes // 64) * 64
    return views


def _plain_buffer(nbytes: int) -> np.ndarray:
    area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        area.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(area, np.uint8)


def _huge_pages_mb() -> float:
    with open("/proc/self/smaps_rollup") as fh:
        found = re.search(r"AnonHugePages:\s+(\d+)", fh.read())
    return int(found.group(1)) / 1024 if found else float("nan")


def main() -> None:
    torch.set_num_threads(1)  # the read of 1 GiB on one thread, as the kernel runs
    rng = np.random.default_rng(0)
    separate = [rng.integers(-127, 128, shape, dtype=np.int8) for shape in SHAPES]
    nbytes = sum(-(-a.nbytes // 64) * 64 for a in separate)
    layouts = {"separate arrays": separate,
               "one buffer, 4 KB pages": _in_one_buffer(separate, _plain_buffer(nbytes)),
               "one buffer, huge pages": _in_one_buffer(separate, huge_page_buffer(nbytes))}
    print(f"weights {nbytes / 1e6:.1f} MB; the process holds {_huge_pages_mb():.0f} MB on huge pages")
    scales = List([np.ones(shape[0], np.float32) for shape in SHAPES])
    x = rng.standard_normal((1, INTER)).astype(np.float32)
    xq, xs = np.empty((1, INTER), np.int16), np.empty((1, INTER // GROUP), np.float32)
    _quantise(x, xq, xs)
    out = List([np.empty((1, shape[0]), np.float32) for shape in SHAPES])
    typed = {name: List(arrays) for name, arrays in layouts.items()}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for weights in typed.values():
        _products(weights, scales, xq, xs, out)  # compile, warm up
    for _ in range(3):
        for name, weights in typed.items():
            runs = []
            for _ in range(30):
                start = time.perf_counter()
                _products(weights, scales, xq, xs, out)
                runs.append(time.perf_counter() - start)
            times[name].append(statistics.median(runs))
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"{name:24s} {seconds * 1e3:6.2f} ms per step  {nbytes / seconds / 1e9:5.1f} GB/s")
    read = memory_gbps()
    print(f"plain read of 1 GiB: {read['4k_pages']:.1f} GB/s on 4 KB pages, {read['huge_pages']:.1f} on huge pages")


if __name__ == "__main__":
    main()
