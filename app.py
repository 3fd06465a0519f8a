"""TRACE demo and analysis app: flags -> services -> Blocks -> launch.

    python app.py                      # TRACE-mini on the bundled demo data (offline, CPU)
    python app.py --model CKPT --mbeir-dir DIR --benchmark OUT/results.json
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "trace-mini"), help="checkpoint or hub id")
    parser.add_argument("--mbeir-dir", default=str(ROOT / "assets" / "minibeir"), help="M-BEIR-format data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--benchmark", default=None,
                        help="results.json of this model's evaluation (default: the one beside the model)")
    parser.add_argument("--analysis", default=None,
                        help="queries.parquet of a --counterfactual evaluation (default: the one beside the model, "
                             "of the precision served when there is one: precision-int8/queries.parquet)")
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "index"))
    parser.add_argument("--shipped-cache", default=str(ROOT / "assets" / "cache"),
                        help="read-only prebuilt indexes and map (python -m app.ship), used when they match the "
                             "model and data; '' for none")
    parser.add_argument("--no-map", action="store_true",
                        help="skip the embedding map (UMAP over the pools; built once, then cached)")
    parser.add_argument("--build-analysis", action="store_true",
                        help="when the model has no evaluation beside it, run one on first start (every test "
                             "query, with the always-reason counterfactual; slow) and cache it for the analysis tabs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads while serving (default 1: on a shared 2-vCPU machine, 2 threads decode a "
                             "chain of thought 4.2x slower beside a busy process and only 38%% faster alone (int8); "
                             "bench/threads.py). Loading the model and building caches run under it too")
    parser.add_argument("--precision", default=None, choices=("fp32", "int8"),
                        help="TRACE-mini's weights: int8 (the default on a CPU: a quarter of the memory, faster; "
                             "held-out recall within 0.5 points of fp32) or fp32 (the reference). Other models and "
                             "GPUs: fp32. bench --sections precision measures both")
    parser.add_argument("--batch-window-ms", type=float, default=20.0,
                        help="searches that arrive within this many ms share one batch through the model "
                             "(micro-batching; bench --sections serving measures 1, 4 and 16 clients)")
    parser.add_argument("--max-batch", type=int, default=16, help="most searches in one batch")
    parser.add_argument("--batch-workers", type=int, default=min(2, len(os.sched_getaffinity(0))
                                                                if hasattr(os, "sched_getaffinity") else 1),
                        help="batches of searches run at once, each in a thread of its own (default: 2 where the "
                             "process has 2 or more CPUs; on 2 cores two batches of 8 run 1.8-1.9x faster together "
                             "than one after the other)")
    parser.add_argument("--no-batching", action="store_true", help="run every search alone, one at a time")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.batch_window_ms < 0 or args.max_batch < 1 or not 1 <= args.batch_workers <= 2:
        parser.error("--batch-window-ms must be >= 0, --max-batch >= 1 and --batch-workers 1 or 2")
    # Converted weights live beside the index cache, whatever folder the app is started from.
    os.environ.setdefault("TRACE_CACHE", str(Path(args.cache_dir).parent))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # torch reads these when it is imported, and each thread keeps the thread count it first runs torch with: set
    # before anything imports torch (the model's load, a background build). TRACE-mini's page is served before
    # torch is imported (about 1.3 s of a warm start); `use_torch` imports it and sets the count explicitly.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    # Searches run in a pool of threads; glibc would give each busy one a heap of its own, and keep what is freed
    # in each (1,047-1,109 against 1,020-1,024 MB after 16 clients): two heaps, set before those threads start.
    from trace_core.heap import limit_malloc_arenas

    limit_malloc_arenas(2)

    def use_torch() -> None:
        import torch

        torch.set_num_threads(args.threads)

    from app.services import ZERO_GPU, Services, default_analysis
    from app.ui import build_app, css
    from trace_core.index import CorruptIndexError, IndexMismatchError
    from trace_core.interface import SERVING
    from trace_core.lazy import LazyEncoder, default_precision
    from trace_core.loading import ModelNotFoundError, load_model

    precision = args.precision or ("fp32" if ZERO_GPU else default_precision(args.model))
    benchmark = args.benchmark or Path(args.model) / "results.json"
    analysis = args.analysis or default_analysis(args.model, precision)
    try:
        # TRACE-mini: the page is built from the checkpoint's files and served first; the weights load after,
        # in a thread (trace_core/lazy.py). Another model loads here, before serving, and so does any model on a
        # ZeroGPU Space (whose GPU must see the weights moved to it at start-up).
        lazy = None if ZERO_GPU else LazyEncoder.of(args.model, precision=precision, config=SERVING)
        if lazy is None:
            use_torch()
        encoder = lazy or load_model(args.model, precision=precision, config=SERVING)
        job = None
        if args.build_analysis and not Path(analysis).is_file():
            done = analysis_folder(encoder, args)
            if (done / "queries.parquet").is_file():  # evaluated by an earlier start
                benchmark, analysis = done / "results.json", done / "queries.parquet"
            else:
                job = lambda lent: build_analysis(lent, args)  # noqa: E731 - run by the background build
        # The page answers as soon as the model is loaded and the pools are read: indexes, the evaluation and
        # the map that are neither shipped nor cached are built in the background, with progress in the page.
        services = Services.load(args.model, args.mbeir_dir, args.split, args.cache_dir, benchmark,
                                 analysis=analysis, embedding_map=not args.no_map, encoder=encoder,
                                 shipped=[args.shipped_cache] if args.shipped_cache else [], background=True,
                                 analysis_job=job)
    except (ValueError, FileNotFoundError, ModelNotFoundError, CorruptIndexError, IndexMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.no_batching:
        services.start_batching(args.batch_window_ms / 1000, args.max_batch, args.batch_workers)
    demo = build_app(services)
    demo.queue(default_concurrency_limit=1)
    # SIGTERM (a Space or container stopping, `kill`) ends the app as Ctrl-C does: the server closes and the
    # process exits normally, so its scratch folder (app.scratch) is removed. Set before the page answers, and
    # the interrupt is caught around launch too: block_thread catches it only once launch has returned, and a
    # signal that came while launch was still finishing (the page answering already) ended the process by SIGINT.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=css(),
                    prevent_thread_lock=True)
        if isinstance(encoder, LazyEncoder):
            use_torch()  # the page answers already; a search sent meanwhile waits for the model
            encoder.start()
        demo.block_thread()
    except KeyboardInterrupt:
        demo.close()
    return 0


def analysis_folder(encoder, args) -> Path:
    """Where the evaluation of --build-analysis is cached: by model fingerprint and split."""
    fp = encoder.fingerprint
    return Path(args.cache_dir).parent / "analysis" / f"{Path(fp['model_id']).name}-{fp['revision']}-{args.split}"


def build_analysis(encoder, args) -> tuple[Path, Path]:
    """The evaluation the analysis tabs read, run once and cached by model fingerprint and split.

    queries.parquet is written last by the evaluation, so its presence marks a finished run.
    """
    from trace_core.evaluate import EvalConfig, evaluate

    fp = encoder.fingerprint
    out = analysis_folder(encoder, args)
    if not (out / "queries.parquet").is_file():
        logging.getLogger("app").info("evaluating %s on %s/%s for the analysis tabs (once) -> %s",
                                      fp["model_id"], args.mbeir_dir, args.split, out)
        evaluate(encoder, Path(args.mbeir_dir), args.split, "all", out,
                 EvalConfig(counterfactual=True, cache_dir=args.cache_dir))
    return out / "results.json", out / "queries.parquet"


if __name__ == "__main__":
    sys.exit(main())
