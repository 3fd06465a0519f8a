"""Speed benchmarks that print figures; ratios are measured side by side in one run (the machines are noisy).

    python bench/run.py --quick        # TRACE-mini on CPU, a few minutes; writes bench/results.json

- direct_path_speed_ratio: queries/s of auto mode on queries that route direct, against a plain one-pass
  embedding of the same queries (the backbone's forward pass and pooling, no routing logic). The paper's
  implementation runs its direct path at 0.53 of plain embedding speed; ours routes and embeds in one pass.
- candidate_overhead: time of encode_candidates against the bare forward passes of the same batches, minus 1.
Runs alternate A/B/A/B and report medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trace_core import EncoderConfig, load_model  # noqa: E402
from trace_core.embed_pool import to_candidate, to_query  # noqa: E402
from trace_core.mbeir import discover_pairs, load_pair, read_instructions  # noqa: E402


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of a and b, run alternately so that drift hits both alike."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_timed(a))
        tb.append(_timed(b))
    return statistics.median(ta), statistics.median(tb)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "trace-mini"))
    parser.add_argument("--data", default=str(ROOT / "assets" / "minibeir"))
    parser.add_argument("--quick", action="store_true", help="small samples (a few minutes on 2 cores)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args(argv)
    n, repeats, bs = (32, 3, 8) if args.quick else (128, 5, 16)
    torch.manual_seed(0)
    encoder = load_model(args.model, config=EncoderConfig(query_batch_size=bs, candidate_batch_size=bs))
    root = Path(args.data)
    instructions = read_instructions(root / "instructions" / "query_instructions.tsv")
    (pair,) = discover_pairs(root, "test", "emoji_task0")  # simple text->image queries: they route direct
    queries, pool, positives = load_pair(pair)
    prompts = instructions.get("text", "image", 10)
    qs = [to_query(q, root, prompts[0]) for q in queries[:n]]
    routes = [r.route for r in encoder.encode_queries(qs)]
    qs = [q for q, r in zip(qs, routes, strict=True) if r == "direct"]
    cands = [to_candidate(c, root) for c in pool[:n]]
    bb = encoder.backbone

    def plain_queries():  # the bare embedding pass: forward, last position, normalise
        for i in range(0, len(qs), bs):
            out = bb.prefill([encoder.render_query(q) for q in qs[i : i + bs]], with_logits=False)
            torch.nn.functional.normalize(out.hidden, dim=-1)

    def auto_queries():
        encoder.encode_queries(qs, reasoning="auto", batch_size=bs)

    def bare_candidates():
        for i in range(0, len(cands), bs):
            bb.prefill([encoder.render_candidate(c) for c in cands[i : i + bs]], with_logits=False)

    def our_candidates():
        encoder.encode_candidates(cands, batch_size=bs)

    auto_queries(), plain_queries()  # warm-up
    t_auto, t_plain = alternate(auto_queries, plain_queries, repeats)
    t_ours, t_bare = alternate(our_candidates, bare_candidates, repeats)
    results = {
        "model": encoder.fingerprint["model_id"],
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
        "direct_queries": len(qs),
        "candidates": len(cands),
        "auto_direct_queries_per_s": len(qs) / t_auto,
        "plain_embedding_queries_per_s": len(qs) / t_plain,
        "direct_path_speed_ratio": t_plain / t_auto,
        "candidates_per_s": len(cands) / t_ours,
        "bare_forward_candidates_per_s": len(cands) / t_bare,
        "candidate_overhead": t_ours / t_bare - 1,
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for k, v in results.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
