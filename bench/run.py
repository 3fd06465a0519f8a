"""Benchmarks that print tables and write bench/results.json; ratios are measured side by side in one run.

    python bench/run.py --quick        # TRACE-mini on CPU, under 5 minutes here
    python bench/run.py                # larger samples, pools up to 1M vectors, the first-run build of the app
    python bench/run.py --sections model,search

Sections (see each module's docstring):
- model (bench/model.py): direct_path_speed_ratio, auto against always, batched generation,
  candidate_overhead and candidate batching.
- threads (bench/threads.py): candidates/s and CoT tokens/s at 1 and 2 torch threads, alone and beside a
  competing busy process.
- precision (bench/precision.py): CoT tokens/s against the memory-bandwidth bound, candidates/s, search latency
  (direct and reasoning) and held-out recall, fp32 and int8.
- search (bench/search.py): faiss exact search against numpy for growing pools; HNSW recall@10 and speed-up.
- serving (bench/serving.py): `python app.py` start-up time, peak memory, and a load test of concurrent
  gradio_client clients mixing search, compare and map requests.
- batching (bench/batching.py): 1, 4 and 16 clients searching at once, with and without the micro-batching
  queue (throughput, p50, p95).
- map_select (bench/map_select.py): the embedding map tab over a synthetic 100k-point map in Chromium: first
  draw, and a box selection until its table is filled.
Paths compared in a ratio run alternately (A, B, A, B, ...) and their medians are compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table  # noqa: E402
from trace_core import EncoderConfig, load_model  # noqa: E402
from trace_core.atomic import atomic_file  # noqa: E402
from trace_core.interface import SERVING  # noqa: E402
from trace_core.loading import wait_for_fused_decoding  # noqa: E402

SECTIONS = ("model", "threads", "precision", "search", "serving", "batching", "map_select")
# --quick without --sections: the sections that fit its 5 minutes; threads, batching and map_select (a minute or
# more each: a busy competitor, two app starts, a browser) run when named.
QUICK_SECTIONS = ("model", "precision", "search", "serving")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "trace-mini"))
    parser.add_argument("--data", default=str(ROOT / "assets" / "minibeir"))
    parser.add_argument("--quick", action="store_true", help="small samples (under 5 minutes on 2 cores)")
    parser.add_argument("--sections", default=None,
                        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all; with --quick: "
                             f"{', '.join(QUICK_SECTIONS)})")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the load test")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args(argv)
    if args.sections is None:
        args.sections = ",".join(QUICK_SECTIONS if args.quick else SECTIONS)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    torch.manual_seed(0)
    started = time.perf_counter()
    results: dict = {"quick": args.quick, "device": "cuda" if torch.cuda.is_available()
                     else f"cpu ({torch.get_num_threads()} threads)"}
    out = Path(args.out)
    if out.is_file():  # sections not run this time keep their last figures
        previous = json.loads(out.read_text())
        results = {**{k: v for k, v in previous.items() if k in SECTIONS}, **results}

    if "model" in sections:
        from bench import model as model_bench

        n, repeats, bs = (32, 3, 8) if args.quick else (128, 5, 16)
        encoder = load_model(args.model, config=EncoderConfig(query_batch_size=bs, candidate_batch_size=bs))
        wait_for_fused_decoding(encoder)
        results["model_id"] = encoder.fingerprint["model_id"]
        results["model"] = model_bench.run(encoder, Path(args.data), n, repeats, bs)
        print(table([{"figure": k, "value": v} for k, v in results["model"].items()], "== model"))
        del encoder
    if "threads" in sections:
        from bench import threads as threads_bench
        from trace_core.lazy import default_precision

        encoder = load_model(args.model, precision=default_precision(args.model), config=SERVING)  # as the app serves
        wait_for_fused_decoding(encoder)
        results["threads"] = threads_bench.run(encoder, Path(args.data), 16 if args.quick else 32, 3 if args.quick else 5)
        print(table(results["threads"], "== threads: 1 and 2 torch threads, alone and beside a busy process"))
        del encoder
    if "precision" in sections:
        from bench import precision

        evaluations = {"fp32": Path(args.model) / "results.json",
                       "int8": Path(args.model) / "precision-int8" / "results.json"}
        results["precision"] = precision.run(args.model, Path(args.data), 3 if args.quick else 8, evaluations,
                                             str(ROOT / ".cache" / "index"))
        print(table(results["precision"]["rows"], "== precision: CoT decoding against the memory-bandwidth bound"))
        for p, r in results["precision"]["recall"].items():
            print(f"  recall {p}: " + (f"mean headline {r['mean_headline']}, mean R@5 {r['mean_recall@5']}" if r
                                       else "no evaluation found"))
    if "search" in sections:
        from bench import search as search_bench

        sizes, hnsw = ([10_000, 100_000], 20_000) if args.quick else ([10_000, 100_000, 1_000_000], 100_000)
        results["search"] = search_bench.run(sizes, hnsw)
        print(table(results["search"]["exact"], "== search: faiss exact against numpy and our index (ms per query)"))
        print(table([results["search"]["approximate"]], "== search: HNSW against exact"))
    if "serving" in sections:
        from bench import serving

        cached = any((ROOT / ".cache" / "index").glob("embedding-map-*.parquet"))
        results["serving"] = serving.run(args.clients, 20 if args.quick else 60, Path(args.data),
                                         first_run=not args.quick)
        results["serving"]["caches_were_warm"] = cached
        s = results["serving"]
        print(table([{k: v for k, v in s.items() if k not in ("load", "log")}], "== serving"))
        print(table([{k: v for k, v in s["load"].items() if k != "error_samples"}], "== load test"))
        for e in s["load"]["error_samples"]:
            print("  error:", e)
    if "batching" in sections:
        from bench import batching

        results["batching"] = batching.run(Path(args.data), searches=16 if args.quick else 64, model=args.model)
        for setting, rows in results["batching"].items():
            if setting == "bound":
                print(table([rows], "== what the machine allows: the same queries alone, then all in one batch"))
                continue
            print(table([{k: v for k, v in r.items() if k != "error_samples"} for r in rows],
                        f"== concurrent searches, {setting}"))
    if "map_select" in sections:
        from app.services import Services
        from bench import map_select

        services = Services.load(args.model, args.data, cache_dir=str(ROOT / ".cache" / "index"), embedding_map=False,
                                 shipped=[ROOT / "assets" / "cache"])
        results["map_select"] = s = map_select.run(services, 100_000, loads=1 if args.quick else 3,
                                                   selections=3 if args.quick else 5)
        print(table([{k: v for k, v in s.items() if k not in ("selections", "first_draw_all_s")}],
                    "== embedding map at 100k synthetic points: first draw, box selection -> table"))
        print(table(s.get("selections", []), "== each box selection (ms)"))
        del services
    results["total_s"] = time.perf_counter() - started
    # the two headline figures at the top level (issue 5 asks for them by name)
    if "model" in results:
        results["direct_path_speed_ratio"] = results["model"]["direct_path_speed_ratio"]
        results["candidate_overhead"] = results["model"]["candidate_overhead"]
    atomic_file(out, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    print(f"wrote {out} ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
