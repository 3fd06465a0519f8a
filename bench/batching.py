"""Concurrent searches with and without the micro-batching queue, side by side in one run.

Starts `python app.py` twice (`--no-batching`, then the default), and for 1, 4 and 16 gradio_client clients
sends searches through the `/search` API: every client sends the same number of searches, one after another,
all clients starting together. Queries mix simple and complex ones (the model reasons on the complex), in auto
mode. Reported per setting and client count: throughput, p50 and p95 latency, errors, and p95 over the
single-client p50 of the same setting (the issue's target: <= 3 with 16 clients), and over the single-client p95
(tail against tail: one client's p50 is a direct-routed search, its p95 a reasoning one).

Also what the machine allows (`compute_bound`, in process, one torch thread per caller, no server): the same
kind of queries encoded one at a time, then N of them in one batched call, and in two batched calls of N / 2 at
once from two threads (as the app's two batch workers run them); the faster of the two is the floor. N clients
that each wait for their answer before sending the next keep N queries in flight, so however they are scheduled
a round of N takes at least the floor's time: that over the single-query median bounds p50 / single from below.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

from bench.common import percentile, run_clients
from bench.serving import start_app

# Text tasks of the bundled benchmark: definitions (complex ones reason), text edits, and plain names.
TASKS = ("emoji_task1", "emoji_task2", "emoji_task0")


def queries(root: Path, per_task: int = 12) -> list[tuple[str, str]]:
    out = []
    for name in TASKS:
        f = root / "query" / "test" / f"mbeir_{name}_test.jsonl"
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out += [(name, r["query_txt"]) for r in rows[:per_task]]
    return out


def load(url: str, clients: int, per_client: int, pool: list[tuple[str, str]], seed: int = 0) -> dict:
    from gradio_client import Client

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    conns = [Client(url, verbose=False) for _ in range(clients)]  # connected before the clock starts
    start = threading.Barrier(clients)

    def worker(i: int) -> None:
        rng = random.Random(seed + i)
        start.wait()
        for _ in range(per_client):
            task, text = rng.choice(pool)
            t = time.perf_counter()
            try:
                out = conns[i].predict(text, None, task, "auto", 10, api_name="/search")
                if len(out["hits"]) != 10:
                    raise ValueError(f"unexpected answer: {str(out)[:200]}")
                with lock:
                    latencies.append(time.perf_counter() - t)
            except Exception as exc:  # noqa: BLE001 - counted, reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])

    wall = run_clients(clients, worker)
    return {"clients": clients, "searches": len(latencies), "errors": len(errors), "error_samples": errors[:3],
            "seconds": wall, "searches_per_s": len(latencies) / wall,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95)}


def compute_bound(model: str, data: Path, pool: list[tuple[str, str]], n: int = 16) -> dict:
    """Seconds for each of n queries alone (median) and for all n in one batched call, on one thread."""
    import statistics

    import torch

    from app.services import Services
    from app.usecases import make_query
    from trace_core.interface import SERVING
    from trace_core.lazy import default_precision
    from trace_core.loading import load_model, wait_for_fused_decoding

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = load_model(model, precision=default_precision(model), config=SERVING)  # as the app serves it
        wait_for_fused_decoding(encoder)
        services = Services.load(model, data, encoder=encoder, embedding_map=False,
                                 shipped=[Path(__file__).resolve().parents[1] / "assets" / "cache"])
        picked = [pool[i * len(pool) // n] for i in range(n)]  # spread over the tasks, as the clients send them
        # each as /search builds it: the task's own instruction
        qs = [make_query(services, task, text, None, None)[1] for task, text in picked]
        encoder.encode_queries(qs[:2])  # warm-up
        alone = []
        for q in qs:
            t = time.perf_counter()
            encoder.encode_queries([q])
            alone.append(time.perf_counter() - t)
        spent = {"prefill": 0.0, "step": 0.0}  # of the one batched call: its prefill and its decoding steps
        bb = encoder.backbone
        timed = {name: getattr(bb, name) for name in spent}

        def timer(name):
            def call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return timed[name](*args, **kwargs)
                finally:
                    spent[name] += time.perf_counter() - start
            return call

        for name in spent:
            setattr(bb, name, timer(name))
        t = time.perf_counter()
        try:
            results = encoder.encode_queries(qs, batch_size=n)
        finally:
            for name in spent:
                delattr(bb, name)  # the bound methods again
        together = time.perf_counter() - t
        # as the app's two batch workers serve them: half in each of two threads at once
        threads = [threading.Thread(target=encoder.encode_queries, args=(half,), kwargs={"batch_size": n})
                   for half in (qs[: n // 2], qs[n // 2 :])]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        two_workers = time.perf_counter() - t
    finally:
        torch.set_num_threads(before)
    single = statistics.median(alone)
    best = min(together, two_workers)
    return {"queries": n, "reason_rate": sum(r.route == "reason" for r in results) / n,
            "alone_p50_s": single, "together_s": together, "together_prefill_s": spent["prefill"],
            "together_decoding_s": spent["step"], "two_workers_s": two_workers,
            "searches_per_s_at_best": n / best, "p50_over_single_at_best": best / single}


def run(data: Path, client_counts=(1, 4, 16), searches: int = 48, model: str | None = None) -> dict:
    """`searches`: about how many each client count sends in all (at least 2 per client)."""
    pool = queries(data)
    out: dict = {}
    for setting, flags in (("one at a time", ["--no-batching"]), ("micro-batched", [])):
        proc, url, _, log = start_app(flags)
        try:
            load(url, 1, 2, pool, seed=99)  # warm-up: first calls pay for lazy imports
            rows = [load(url, n, max(2, searches // n), pool) for n in client_counts]
        finally:
            proc.terminate()
            proc.wait(30)
        single, single_p95 = rows[0]["p50_s"], rows[0]["p95_s"]
        for r in rows:
            r["p95_over_single_p50"] = r["p95_s"] / single if single else float("nan")
            r["p95_over_single_p95"] = r["p95_s"] / single_p95 if single_p95 else float("nan")
        out[setting] = rows
    if model is not None:
        out["bound"] = compute_bound(model, data, pool, max(client_counts))
    return out
