"""Evaluate a model on M-BEIR (or any M-BEIR-format data) with local candidate pools.

    python -m trace_core.evaluate --mbeir-dir DIR --split test --pairs all --model M --out OUT

For each (dataset, task) pair on disk: embed and index its local pool (cached), encode the queries with the
M-BEIR instruction of their (query modality, candidate modality, dataset), rank the pool, and score hit-based
Recall@1/5/10 as UniIR does (a query counts as a hit when any positive is in the top k). Writes
- OUT/results.json: per pair recall@k, n_queries, reason_rate, mean_cot_tokens, queries_per_s; "average" over pairs;
- OUT/runs/mbeir_<name>_<split>_run.txt: UniIR run files, lines `qid Q0 did rank score run_id task_id`;
- OUT/queries.parquet: one row per query (route, CoT, tokens, latency, gold rank and score, and the same under
  the direct route) for the analysis tabs; OUT/embeddings/<name>.npz: final and direct query embeddings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_file
from .embed_pool import pool_index, to_query
from .index import CorruptIndexError, IndexConfig, IndexMismatchError
from .instructions import Instructions, instructions_for
from .interface import Encoder
from .loading import ModelNotFoundError
from .mbeir import MBEIRPair, candidate_modality_of, check_images, discover_pairs, load_pair
from .metrics import headline_metric, mean_of_pairs
from .records import PRECISIONS, REASONING_MODES, InputError, ReasoningMode

log = logging.getLogger(__name__)

KS = (1, 5, 10)
RUN_DEPTH = 50  # candidates written per query in the run files (UniIR writes the top 50)


@dataclass(frozen=True)
class EvalConfig:
    reasoning: ReasoningMode = "auto"  # auto | always | never (records.REASONING_MODES)
    routing_bias: float = 0.0  # added to the <|emb|> logit at the first step
    instruction_index: int = 0  # which of the four M-BEIR instructions (0-3) to use
    max_queries: int | None = None  # evaluate only the first N queries of each pair (quick looks)
    counterfactual: bool = False  # also encode every query with reasoning forced on (for the analysis)
    run_id: str = "trace"  # run id column of the run files
    cache_dir: str = ".cache/index"  # where pool indexes are cached
    approximate_above: int = IndexConfig.approximate_above  # pools larger than this get an HNSW index
    no_repeat_ngram: int = 0  # repetition guard of CoT decoding (0: plain greedy, the paper's decoding)


def evaluate_pair(
    encoder: Encoder, pair: MBEIRPair, root: Path, instructions: Instructions, cfg: EvalConfig
) -> tuple[dict, pd.DataFrame, list[str], dict[str, np.ndarray]]:
    """Metrics, per-query rows, run-file lines and query embeddings of one pair."""
    queries, pool, positives = load_pair(pair)
    if cfg.max_queries is not None:
        queries = queries[: cfg.max_queries]
    if not queries:
        raise ValueError(f"{pair.query_file} has no queries")
    check_images(root, queries, pool)
    pool_by_id = {c.did: c for c in pool}
    index = pool_index(encoder, pool, root, cfg.cache_dir, pair.pool_file.stem,
                       IndexConfig(approximate_above=cfg.approximate_above))

    inputs = []
    for q in queries:
        try:
            cand_modality = candidate_modality_of(q, pool_by_id, positives[q.qid])
        except KeyError:  # no positive in the pool: fall back to the pool's majority modality
            cand_modality = pd.Series([c.modality for c in pool]).mode()[0]
        instruction = instructions.for_query(q, cand_modality, cfg.instruction_index)
        inputs.append(to_query(q, root, instruction))

    t0 = time.perf_counter()
    results = encoder.encode_queries(
        inputs, reasoning=cfg.reasoning, routing_bias=cfg.routing_bias, progress=True,
        no_repeat_ngram=cfg.no_repeat_ngram,
    )
    elapsed = time.perf_counter() - t0
    final = np.stack([r.embedding for r in results])  # [Q, D]
    direct = np.stack([r.direct_embedding for r in results])  # [Q, D]
    depth = max(RUN_DEPTH, max(KS))
    scores, ranked = index.search(final, depth)

    always, always_elapsed = None, 0.0
    if cfg.counterfactual:
        t1 = time.perf_counter()
        always = encoder.encode_queries(inputs, reasoning="always", progress=True,
                                        no_repeat_ngram=cfg.no_repeat_ngram)
        always_elapsed = time.perf_counter() - t1

    gold_sets = [positives[q.qid] for q in queries]
    # The gold rank: the exact best rank of any positive over the whole pool (not only the top k).
    gold_rank, gold_score, gold_did = index.gold_ranks(final, gold_sets)
    gold_rank_direct, gold_score_direct, _ = index.gold_ranks(direct, gold_sets)
    if always is not None:
        gold_rank_always = index.gold_ranks(np.stack([a.embedding for a in always]), gold_sets)[0]

    rows, run_lines = [], []
    for i, (q, r) in enumerate(zip(queries, results, strict=True)):
        row = {
            "pair": pair.name,
            "qid": q.qid,
            "task_id": q.task_id,
            "dataset_id": q.dataset_id,
            "query_modality": q.modality,
            "query_txt": q.text,
            "query_img_path": q.image_path,
            "instruction": inputs[i].instruction,
            "positives": sorted(positives[q.qid]),
            "route": r.route,
            "p_emb": r.p_emb,
            "emb_margin": r.emb_margin,
            "cot": r.cot,
            "cot_tokens": r.cot_tokens,
            "stop_reason": r.stop_reason,
            "latency_s": r.latency_s,
            "gold_did": gold_did[i],
            "gold_rank": gold_rank[i],
            "gold_score": gold_score[i],
            "gold_rank_direct": gold_rank_direct[i],
            "gold_score_direct": gold_score_direct[i],
            "top_dids": ranked[i][:10],
            "top_scores": scores[i][:10].tolist(),
        }
        for k in KS:
            row[f"hit@{k}"] = bool(gold_rank[i] <= k)  # NaN (no positive in the pool) compares False
        if always is not None:
            row["gold_rank_always"] = gold_rank_always[i]
            row["cot_tokens_always"] = always[i].cot_tokens
        rows.append(row)
        for rank, (did, score) in enumerate(zip(ranked[i], scores[i], strict=True), start=1):
            run_lines.append(f"{q.qid} Q0 {did} {rank} {score:.6f} {cfg.run_id} {q.task_id}")

    table = pd.DataFrame(rows)
    metrics = {f"recall@{k}": float(table[f"hit@{k}"].mean()) for k in KS}
    metrics.update(
        n_queries=len(queries),
        reason_rate=float((table["route"] == "reason").mean()),
        mean_cot_tokens=float(table["cot_tokens"].mean()),
        queries_per_s=len(queries) / elapsed if elapsed > 0 else float("inf"),
    )
    if always is not None:
        # The counterfactual pass is itself a full always-reason run: its metrics come for free.
        metrics["always"] = {
            **{f"recall@{k}": float((table["gold_rank_always"] <= k).mean()) for k in KS},
            "n_queries": len(queries),
            "reason_rate": 1.0,
            "mean_cot_tokens": float(table["cot_tokens_always"].mean()),
            "queries_per_s": len(queries) / always_elapsed if always_elapsed > 0 else float("inf"),
        }
    embeddings = {"qid": np.array([q.qid for q in queries]), "final": final, "direct": direct}
    return metrics, table, run_lines, embeddings


def evaluate(encoder: Encoder, root: Path, split: str, pairs: str, out: Path, cfg: EvalConfig) -> dict:
    """Evaluate every selected pair and write results.json, run files, queries.parquet and embeddings."""
    found = discover_pairs(root, split, pairs)
    if not found:
        raise FileNotFoundError(f"no query files under {root / 'query' / split}")
    instructions = instructions_for(root)
    per_pair, tables = {}, []
    for n, pair in enumerate(found, start=1):
        log.info("[%d/%d] %s", n, len(found), pair.name)
        metrics, table, run_lines, embeddings = evaluate_pair(encoder, pair, root, instructions, cfg)
        per_pair[pair.name] = metrics
        tables.append(table)
        run_file = out / "runs" / f"mbeir_{pair.name}_{split}_run.txt"
        atomic_file(run_file, lambda p, lines=run_lines: Path(p).write_text("\n".join(lines) + "\n"))
        atomic_file(out / "embeddings" / f"{pair.name}.npz", lambda p, e=embeddings: _save_npz(p, e))
        head = headline_metric(pair.name)
        log.info("%s: %s %.4f, reason rate %.2f", pair.name, head, metrics[head], metrics["reason_rate"])

    always = {p: m.pop("always") for p, m in per_pair.items() if "always" in m}
    results = {
        "model": encoder.fingerprint,
        "precision": getattr(getattr(encoder, "backbone", None), "precision", "fp32"),  # baselines: no backbone
        "split": split,
        "config": {k: v for k, v in cfg.__dict__.items() if k != "cache_dir"},
        "pairs": per_pair,
        "average": _average(per_pair),
    }
    if always:
        results["counterfactual_always"] = {"pairs": always, "average": _average(always)}
    atomic_file(out / "results.json", lambda p: Path(p).write_text(json.dumps(results, indent=2) + "\n"))
    table = pd.concat(tables, ignore_index=True)
    atomic_file(out / "queries.parquet", lambda p: table.to_parquet(p, index=False))
    return results


def _average(per_pair: dict[str, dict]) -> dict:
    keys = [*(f"recall@{k}" for k in KS), "reason_rate", "mean_cot_tokens", "queries_per_s"]
    average = {k: mean_of_pairs(per_pair, k) for k in keys}
    average["headline"] = mean_of_pairs({p: {"h": m[headline_metric(p)]} for p, m in per_pair.items()}, "h")
    average["n_queries"] = int(sum(m["n_queries"] for m in per_pair.values()))
    return average


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:  # a file object keeps numpy from appending ".npz" to the temp name
        np.savez(fh, **arrays)


def table_rows(results: dict) -> list[dict]:
    """The per-pair table of a results.json run, then its average: one dict per row, recalls in percent, with
    the paper's headline metric (R@5; R@10 for Fashion200K and FashionIQ). `format_table` prints it; the app's
    benchmark tab shows it."""

    def row(pair: str, metric: str, m: dict, score: float) -> dict:
        return {"pair": pair, "metric": metric, "score": 100 * score, "R@1": 100 * m["recall@1"],
                "R@5": 100 * m["recall@5"], "R@10": 100 * m["recall@10"], "reason rate": m["reason_rate"],
                "mean CoT tokens": m["mean_cot_tokens"], "queries/s": m["queries_per_s"], "n": m["n_queries"]}

    rows = [row(name, headline_metric(name), m, m[headline_metric(name)]) for name, m in results["pairs"].items()]
    a = results["average"]
    return [*rows, row("average", "headline", a, a["headline"])]


def format_table(results: dict) -> str:
    """`table_rows` as the text table the CLI prints."""
    lines = [f"{'pair':<28} {'metric':>10} {'score':>7} {'R@1':>6} {'R@5':>6} {'R@10':>6} "
             f"{'reason':>7} {'cot tok':>8} {'q/s':>7} {'n':>6}"]
    for r in table_rows(results):
        lines.append(
            f"{r['pair']:<28} {r['metric']:>10} {r['score']:7.2f} {r['R@1']:6.2f} {r['R@5']:6.2f} {r['R@10']:6.2f} "
            f"{r['reason rate']:7.2f} {r['mean CoT tokens']:8.1f} {r['queries/s']:7.2f} {r['n']:6d}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trace_core.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--mbeir-dir", required=True, help="M-BEIR root (query/, cand_pool/, qrels/, ...)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pairs", default="all", help="'all' or comma-separated names, e.g. cirr_task7")
    parser.add_argument("--model", required=True, help="checkpoint directory (or hub id when online)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="int8: TRACE-mini's LM with int8 weights (CPU; trace_core/backbones/weight_int8.py)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--reasoning", default="auto", choices=REASONING_MODES)
    parser.add_argument("--routing-bias", type=float, default=0.0)
    parser.add_argument("--instruction-index", type=int, default=0, choices=range(4))
    parser.add_argument("--max-queries", type=int, default=None, help="first N queries per pair only")
    parser.add_argument("--no-repeat-ngram", type=int, default=0,
                        help="repetition guard: never repeat an n-gram of this length in a CoT (0: off, the paper's "
                             "greedy decoding)")
    parser.add_argument("--counterfactual", action="store_true",
                        help="also encode every query with reasoning forced on (gold rank with/without CoT)")
    parser.add_argument("--style", default=None, help="prompt style override: trace, lamra, ume-r1")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache-dir", default=".cache/index", help="where pool indexes are cached")
    parser.add_argument("--approximate-above", type=int, default=IndexConfig.approximate_above,
                        help="pools larger than this use an HNSW index (its recall vs exact search is logged)")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .loading import load_model, wait_for_fused_decoding

    cfg = EvalConfig(
        reasoning=args.reasoning,
        routing_bias=args.routing_bias,
        instruction_index=args.instruction_index,
        max_queries=args.max_queries,
        counterfactual=args.counterfactual,
        cache_dir=args.cache_dir,
        approximate_above=args.approximate_above,
        no_repeat_ngram=args.no_repeat_ngram,
    )
    try:
        root = Path(args.mbeir_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"--mbeir-dir {root} is not a directory")
        encoder = load_model(args.model, style=args.style, device=args.device,
                             trust_remote_code=args.trust_remote_code, precision=args.precision)
        wait_for_fused_decoding(encoder)  # one decoding path throughout
        results = evaluate(encoder, root, args.split, args.pairs, Path(args.out), cfg)
    except (ValueError, KeyError, FileNotFoundError, ModelNotFoundError, InputError, CorruptIndexError,
            IndexMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
