"""TRACE demo and analysis app: flags -> services -> Blocks -> launch.

    python app.py                      # TRACE-mini on the bundled demo data (offline, CPU)
    python app.py --model CKPT --mbeir-dir DIR --benchmark OUT/results.json
"""

from __future__ import annotations

import argparse
import logging
import os
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
                        help="queries.parquet of a --counterfactual evaluation (default: the one beside the model)")
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "index"))
    parser.add_argument("--no-map", action="store_true",
                        help="skip the embedding map (UMAP over the pools; built once, then cached)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true")
    args = parser.parse_args(argv)
    # Converted weights live beside the index cache, whatever folder the app is started from.
    os.environ.setdefault("TRACE_CACHE", str(Path(args.cache_dir).parent))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from app.services import Services
    from app.ui import build_app, css
    from trace_core.index import CorruptIndexError, IndexMismatchError
    from trace_core.loading import ModelNotFoundError

    benchmark = args.benchmark or Path(args.model) / "results.json"
    analysis = args.analysis or Path(args.model) / "queries.parquet"
    try:
        services = Services.load(args.model, args.mbeir_dir, args.split, args.cache_dir, benchmark,
                                 analysis=analysis, embedding_map=not args.no_map)
    except (ValueError, FileNotFoundError, ModelNotFoundError, CorruptIndexError, IndexMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    demo = build_app(services)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=css())
    return 0


if __name__ == "__main__":
    sys.exit(main())
