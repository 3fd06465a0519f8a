"""The app as served: start-up time (the page answers, then the first search), peak memory, and 16 concurrent
clients mixing search, compare and map.

Starts `python app.py` in a subprocess (a free port), times it from launch to the first HTTP 200, then drives
it with N gradio_client clients, each in its own thread, for a bounded time. Every request is checked (a
result with hits, a comparison, a map position); errors are counted, latencies reported as p50 / p95.
Memory is the server process's peak resident set (VmHWM from /proc), after start-up and after the load.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench.common import percentile, run_clients

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    """The most memory the process has held so far (VmHWM), loading included."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """The memory the process holds now (VmRSS). With int8 weights the peak is at loading (the float32 weights
    are read, then quantised and dropped), so the two differ."""
    return _status_mb(pid, "VmRSS")


def start_app(extra: list[str], timeout: float = 1800) -> tuple[subprocess.Popen, str, float, Path]:
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"trace-bench-app-{port}.log"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), *extra],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - t0, log
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"app.py not ready after {timeout} s; see {log}")


def benchmark_queries(root: Path) -> list[tuple[str, str]]:
    """(task, text) pairs from text-query tasks of the bundled benchmark: simple and complex ones."""
    out = []
    for name in ("emoji_task0", "emoji_task1", "clipart_task0"):
        f = root / "query" / "test" / f"mbeir_{name}_test.jsonl"
        for line in f.read_text().splitlines()[:40]:
            if line.strip():
                out.append((name, json.loads(line)["query_txt"]))
    return out


def load_test(url: str, clients: int, seconds: float, queries: list[tuple[str, str]], seed: int = 0) -> dict:
    """N clients, each its own gradio_client.Client in a thread, sending (task, text) queries until time is up."""
    from gradio_client import Client

    latencies: dict[str, list[float]] = {"search": [], "compare": [], "map_place": []}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(i: int) -> None:
        rng = random.Random(seed + i)
        try:
            client = Client(url, verbose=False)
        except Exception as exc:  # noqa: BLE001 - counted, reported
            with lock:
                errors.append(f"connect: {exc}")
            return
        while time.perf_counter() < deadline:
            task, text = rng.choice(queries)
            kind = rng.choices(["search", "compare", "map_place"], weights=[6, 2, 2])[0]
            t = time.perf_counter()
            try:
                if kind == "search":
                    out = client.predict(text, None, task, rng.choice(["auto", "never"]), 10, api_name="/search")
                    ok = len(out["hits"]) == 10
                elif kind == "compare":
                    out = client.predict(text, None, task, 5, api_name="/compare")
                    ok = "Top-5 overlap" in out
                else:
                    out = client.predict(text, None, task, "auto", 5, api_name="/map_place")
                    ok = "focus" in out and len(out["neighbours"]) == 5
                if not ok:
                    raise ValueError(f"unexpected answer: {str(out)[:200]}")
                with lock:
                    latencies[kind].append(time.perf_counter() - t)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])

    wall = run_clients(clients, worker)
    every = [x for v in latencies.values() for x in v]
    return {"clients": clients, "seconds": wall, "served": len(every), "errors": len(errors),
            "error_samples": errors[:5], "requests_per_s": len(every) / wall,
            "p50_s": percentile(every, 50), "p95_s": percentile(every, 95),
            **{f"{k}_served": len(v) for k, v in latencies.items()},
            **{f"{k}_p50_s": percentile(v, 50) for k, v in latencies.items()}}


def first_search(url: str, query: tuple[str, str]) -> float:
    """Seconds until one search (auto) answers, from when it is sent."""
    from gradio_client import Client

    t0 = time.perf_counter()
    task, text = query
    Client(url, verbose=False).predict(text, None, task, "auto", 5, api_name="/search")
    return time.perf_counter() - t0


def run(clients: int, seconds: float, data: Path, first_run: bool) -> dict:
    out: dict = {}
    if first_run:  # everything built from scratch: SmolLM2 conversion aside, pools, indexes and the map
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            proc, _, startup, _ = start_app(["--cache-dir", str(Path(tmp) / "index")])
            out["first_run_startup_s"] = startup
            proc.terminate()
            proc.wait(30)
    proc, url, startup, log = start_app([])
    try:
        out["startup_s"] = startup  # the page answers (TRACE-mini's weights load after: trace_core/lazy.py)
        out["peak_rss_mb_after_start"] = peak_rss_mb(proc.pid)
        out["first_search_s"] = startup + first_search(url, benchmark_queries(data)[0])  # waits for the model
        out["peak_rss_mb_after_first_search"] = peak_rss_mb(proc.pid)
        out["rss_mb_after_first_search"] = rss_mb(proc.pid)
        out["load"] = load_test(url, clients, seconds, benchmark_queries(data))
        out["peak_rss_mb_after_load"] = peak_rss_mb(proc.pid)
        out["rss_mb_after_load"] = rss_mb(proc.pid)
        with urllib.request.urlopen(url, timeout=10) as r:
            out["alive_after_load"] = r.status == 200 and proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    out["log"] = log.name  # in $TMPDIR; a file name only: no machine path in results.json
    return out
