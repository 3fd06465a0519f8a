"""The TRACE-mini evidence: evaluate the model in every mode, the baselines, and write one results file.

    python -m trace_core.minibeir.report --model assets/trace-mini --data assets/minibeir \
        [--ablation runs/trace-mini-nogen/model] [--baseline minilm-bridge] --out assets/trace-mini

Runs `trace_core.evaluate` on the held-out test split for: TRACE-mini in auto mode, forced never to reason,
forced always to reason; the λ_gen = 0 ablation (when given); the dual-encoder baseline (when given). Writes
OUT/results.json (every run's per-pair metrics and the routing agreement with the difficulty labels),
OUT/RESULTS.md (the tables, for the model card), and for the app's analysis tabs the auto run's per-query
table OUT/queries.parquet and query embeddings OUT/embeddings/<pair>.npz.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..atomic import atomic_directory
from ..encoder import EncoderConfig
from ..evaluate import EvalConfig, evaluate
from ..loading import load_model
from ..mbeir import discover_pairs
from ..metrics import headline_metric

log = logging.getLogger(__name__)


def routing_labels(data: Path, split: str) -> pd.DataFrame:
    """qid -> labelled route of the test queries (the M-BEIR-CoT `route` key)."""
    rows = []
    for pair in discover_pairs(data, split):
        for line in pair.query_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                rows.append({"pair": pair.name, "qid": obj["qid"], "label": obj.get("route", "direct")})
    return pd.DataFrame(rows)


def routing_agreement(queries: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """How often the model's route matches the difficulty label, overall and per label."""
    merged = queries[["pair", "qid", "route"]].merge(labels, on=["pair", "qid"])
    out = {"accuracy": float((merged["route"] == merged["label"]).mean())}
    for label in ("direct", "reason"):
        part = merged[merged["label"] == label]
        if len(part):
            out[f"reason_rate_when_{label}"] = float((part["route"] == "reason").mean())
            out[f"n_{label}"] = int(len(part))
    return out


def _add_routing(name: str, runs: dict, routing: dict, table: pd.DataFrame, labels: pd.DataFrame) -> None:
    """Routing agreement of a run; the auto run's counterfactual pass becomes the "always reason" run."""
    routing[name] = routing_agreement(table, labels)
    if "counterfactual_always" in runs[name]:
        runs["always reason"] = runs[name].pop("counterfactual_always")
        routing["always reason"] = routing_agreement(table.assign(route="reason"), labels)


def _table(runs: dict[str, dict]) -> str:
    pairs = sorted(next(iter(runs.values()))["pairs"])
    head = "| pair | metric | " + " | ".join(runs) + " |"
    lines = [head, "|" + "---|" * (len(runs) + 2)]
    for p in pairs:
        metric = headline_metric(p)
        cells = [f"{100 * r['pairs'][p][metric]:.1f}" for r in runs.values()]
        lines.append(f"| {p} | {metric.replace('recall@', 'R@')} | " + " | ".join(cells) + " |")
    cells = [f"{100 * r['average']['headline']:.1f}" for r in runs.values()]
    lines.append("| **average** | headline | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _detail(name: str, r: dict) -> str:
    lines = [f"#### {name}", "", "| pair | R@1 | R@5 | R@10 | reason rate | mean CoT tokens | queries/s | n |",
             "|---|---|---|---|---|---|---|---|"]
    for p, m in sorted(r["pairs"].items()):
        lines.append(
            f"| {p} | {100 * m['recall@1']:.1f} | {100 * m['recall@5']:.1f} | {100 * m['recall@10']:.1f} | "
            f"{m['reason_rate']:.2f} | {m['mean_cot_tokens']:.1f} | {m['queries_per_s']:.2f} | {m['n_queries']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trace_core.minibeir.report", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="assets/minibeir")
    parser.add_argument("--split", default="test")
    parser.add_argument("--ablation", default=None, help="checkpoint trained with λ_gen = 0")
    parser.add_argument("--baseline", default=None, help="a dual-encoder baseline, e.g. minilm-bridge")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="runs/report", help="folder for the individual evaluation runs")
    parser.add_argument("--cache-dir", default=".cache/index")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs found in --work instead of evaluating them again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    labels = routing_labels(data, args.split)

    # "always reason" is not a separate run: the auto run's counterfactual pass encodes every query with
    # reasoning forced on, and evaluate() reports it as a run of its own.
    plan = [("TRACE-mini auto", args.model, "auto"), ("never reason", args.model, "never")]
    if args.ablation:
        # auto shows whether routing is learned without CoT supervision; never isolates its embedding quality
        plan.append(("λ_gen = 0 ablation (auto)", args.ablation, "auto"))
        plan.append(("λ_gen = 0 ablation (never)", args.ablation, "never"))
    if args.baseline:
        plan.append((f"baseline: {args.baseline}", args.baseline, "never"))
    runs, routing, encoders = {}, {}, {}
    for name, model, mode in plan:
        log.info("== %s", name)
        run_dir = work / name.split(":")[0].replace(" ", "-").replace("λ_gen-=-0", "nogen")
        if args.reuse and (run_dir / "queries.parquet").is_file() and (run_dir / "results.json").is_file():
            log.info("reusing the finished run in %s", run_dir)
            runs[name] = json.loads((run_dir / "results.json").read_text())
            _add_routing(name, runs, routing, pd.read_parquet(run_dir / "queries.parquet"), labels)
            continue
        if model not in encoders:
            # one model in memory at a time; batches of 32 make CPU decoding ~2x faster per query than 8
            encoders = {model: load_model(model, config=EncoderConfig(query_batch_size=32))}
        # The default run also encodes every query with reasoning forced on (gold rank with and without CoT):
        # the analysis tabs read that table, shipped beside the model as queries.parquet.
        cfg = EvalConfig(reasoning=mode, cache_dir=args.cache_dir, run_id=name.split()[0],
                         counterfactual=name == "TRACE-mini auto")
        runs[name] = evaluate(encoders[model], data, args.split, "all", run_dir, cfg)
        _add_routing(name, runs, routing, pd.read_parquet(run_dir / "queries.parquet"), labels)

    results = {"split": args.split, "data": str(data), "runs": runs, "routing_vs_labels": routing}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    # The analysis tabs read the auto run's per-query table and its query embeddings (the embedding map).
    shutil.copyfile(work / "TRACE-mini-auto" / "queries.parquet", out / "queries.parquet")
    with atomic_directory(out / "embeddings") as tmp:
        for f in sorted((work / "TRACE-mini-auto" / "embeddings").glob("*.npz")):
            shutil.copyfile(f, tmp / f.name)
    # the command that reproduces every run from scratch (--reuse only skips runs already finished)
    command = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--reuse")
    md = ["# TRACE-mini results on the held-out test split of assets/minibeir", "",
          f"Produced by `python -m trace_core.minibeir.report {command}`.", "",
          "Headline metric per pair (R@5; R@10 for fashion datasets), in %:", "", _table(runs), "",
          "Routing against the difficulty labels (share of queries routed to reasoning):", "",
          "| run | agreement | reason rate on 'direct'-labelled | reason rate on 'reason'-labelled |",
          "|---|---|---|---|"]
    for name, r in routing.items():
        md.append(f"| {name} | {r['accuracy']:.2f} | {r.get('reason_rate_when_direct', 0):.2f} | "
                  f"{r.get('reason_rate_when_reason', 0):.2f} |")
    md += ["", "Per-pair detail:", ""] + [_detail(n, r) + "\n" for n, r in runs.items()]
    (out / "RESULTS.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:8 + len(runs["TRACE-mini auto"]["pairs"]) + 3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
