"""Regenerate the caches the app ships (assets/cache) from the shipped model and data.

    python -m app.ship [--model assets/trace-mini] [--mbeir-dir assets/minibeir] [--out assets/cache] [--precision P]

They are what the first start of `python app.py` would otherwise compute, and none of it depends on the
machine: every demo pool's candidate index and the embedding map, for the precision the app serves the model
in (`--precision`; int8 for TRACE-mini on a CPU, whose embeddings differ a little from float32's). Each
carries the fingerprint of what it came from (an index's manifest names the model's weights, the prompt and the
pool's content; the map's file name is the fingerprint of the model, the pools' embeddings and the benchmark
queries), and the app takes one only when it matches: a retrained model or changed data rebuilds them in the local cache, as before.
`tests/test_shipped_caches.py` fails when a shipped cache does not match the shipped model and data.

An index's embeddings are stored as float16 when that leaves the rank of every benchmark query's gold
candidate unchanged (direct and final embeddings, as the evaluation beside the model ranked them), else as
float32. What was checked is written to OUT/SHIPPED.json. The local cache (--cache-dir) is used and filled on
the way, so a second run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trace_core.records import PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("app.ship")


def half_precision_check(index, pair: str, table: pd.DataFrame | None, folder: Path) -> dict:
    """Does storing this index as float16 change any benchmark query's gold rank? Compares the ranks from
    the float32 and the float16-rounded embeddings, for the direct and the final query embeddings."""
    from trace_core.index import CandidateIndex

    half = CandidateIndex(index.ids, index.embeddings.astype(np.float16).astype(np.float32), None, index.manifest)
    npz_path = folder / f"{pair}.npz"
    if table is None or not npz_path.is_file():
        return {"queries": 0, "changed": None}
    rows = table[(table["pair"] == pair) & table["gold_did"].isin(index.ids)]
    with np.load(npz_path) as npz:
        pos = {str(q): i for i, q in enumerate(npz["qid"])}
        rows = rows[rows["qid"].isin(pos)]
        take = [pos[q] for q in rows["qid"]]
        vectors = [npz["direct"][take], npz["final"][take]]
    gold = list(rows["gold_did"])
    changed = sum(int((index.ranks_of(q, gold)[0] != half.ranks_of(q, gold)[0]).sum()) for q in vectors)
    return {"queries": len(gold), "changed": changed}


def ship(model: str, data: Path, out: Path, split: str, cache_dir: str, analysis: Path | None,
         precision: str = "fp32") -> dict:
    from analysis.embedding_map import load_or_build
    from app.services import Services, map_inputs
    from trace_core.atomic import atomic_directory
    from trace_core.embed_pool import cache_path, pool_index
    from trace_core.loading import load_model
    from trace_core.mbeir import discover_pairs, load_pair

    encoder = load_model(model, precision=precision)
    table = pd.read_parquet(analysis) if analysis is not None and analysis.is_file() else None
    report: dict = {"model": encoder.fingerprint, "data": str(data.relative_to(ROOT) if data.is_relative_to(ROOT)
                                                              else data), "split": split, "indexes": {}}
    with atomic_directory(out) as tmp:
        for pair in discover_pairs(data, split):
            _, pool, _ = load_pair(pair)
            index = pool_index(encoder, pool, data, cache_dir, pair.pool_file.stem)
            check = half_precision_check(index, pair.name, table, analysis.parent / "embeddings" if analysis else data)
            dtype = "float16" if check["changed"] == 0 else "float32"
            name = cache_path(tmp, pair.pool_file.stem, index.manifest).name
            index.save(tmp / name, dtype=dtype)
            report["indexes"][name] = {"pair": pair.name, "candidates": len(index), "dtype": dtype,
                                       "benchmark_queries_checked": check["queries"],
                                       "gold_ranks_changed_by_float16": check["changed"]}
            log.info("%s: %d candidates, stored as %s (%s)", pair.name, len(index), dtype, check)
        # The map from the indexes as shipped (float16 embeddings move its fingerprint), fitted in or taken
        # from the local cache, then copied beside them.
        services = Services.load(model, data, split, cache_dir, encoder=encoder, analysis=analysis,
                                 embedding_map=False, shipped=[tmp])
        pools, queries, keep = map_inputs(services, analysis)
        emap = load_or_build(pools, queries, encoder.fingerprint, cache_dir, keep=keep)
        map_file = f"embedding-map-{emap.fingerprint}.parquet"
        shutil.copyfile(Path(cache_dir) / map_file, tmp / map_file)
        report["map"] = {"file": map_file, "points": len(emap.points)}
        (tmp / "SHIPPED.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.ship", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "trace-mini"))
    parser.add_argument("--mbeir-dir", default=str(ROOT / "assets" / "minibeir"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default=str(ROOT / "assets" / "cache"))
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "index"), help="the local cache, used and filled")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="the precision the caches are for (default: the one the app serves this model in)")
    parser.add_argument("--analysis", default=None, help="queries.parquet of the model's evaluation "
                                                         "(default: the one the app reads, app.services.default_analysis)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from app.services import default_analysis
    from trace_core.lazy import default_precision

    precision = args.precision or default_precision(args.model)
    analysis = Path(args.analysis) if args.analysis else default_analysis(args.model, precision)
    try:
        report = ship(args.model, Path(args.mbeir_dir), Path(args.out), args.split, args.cache_dir, analysis,
                      precision)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    for r in report["indexes"].values():
        print(f"{r['pair']:<20} {r['candidates']:>6} candidates  {r['dtype']:<8} "
              f"gold ranks changed by float16: {r['gold_ranks_changed_by_float16']} "
              f"of {r['benchmark_queries_checked']} queries x 2")
    print(f"map: {report['map']['points']} points; wrote {args.out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
