"""Torch threads on a small shared CPU: candidates/s and CoT tokens/s at 1 and 2 threads, alone and beside a
competing busy process (a Space's vCPUs are shared with whatever else runs there).

The competitor is a separate Python process that multiplies matrices on 2 torch threads for as long as the
measurement lasts. Each setting is measured with its thread count set in this process
(`torch.set_num_threads`), 1 and 2 threads alternated, medians compared.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import timed
from bench.model import _queries
from trace_core.encoder import Encoder

BUSY = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(768, 768)\n"
        "while True:\n    a = torch.tanh(a @ a)\n")


def _rates(encoder: Encoder, cands, queries, threads: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    t_c = timed(lambda: encoder.encode_candidates(cands, batch_size=len(cands)))
    t0 = time.perf_counter()
    res = encoder.encode_queries(queries, reasoning="always", batch_size=len(queries))
    t_q = time.perf_counter() - t0
    return len(cands) / t_c, sum(r.cot_tokens for r in res) / t_q


def run(encoder: Encoder, root: Path, n: int, repeats: int) -> list[dict]:
    before = torch.get_num_threads()
    _, cands = _queries(root, "emoji_task0", n)
    queries, _ = _queries(root, "emoji_task2", max(4, n // 4), route="reason")
    _rates(encoder, cands[:4], queries[:2], 1)  # warm-up
    rows = []
    for setting in ("alone", "beside a busy process"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if setting != "alone" else None
        try:
            if busy is not None:
                time.sleep(2)  # the competitor is up and spinning
            out: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
            for _ in range(repeats):
                out[1].append(_rates(encoder, cands, queries, 1))
                out[2].append(_rates(encoder, cands, queries, 2))
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        for threads, values in out.items():
            rows.append({"setting": setting, "threads": threads,
                         "candidates_per_s": round(statistics.median(v[0] for v in values), 2),
                         "cot_tokens_per_s": round(statistics.median(v[1] for v in values), 1)})
    torch.set_num_threads(before)
    return rows
