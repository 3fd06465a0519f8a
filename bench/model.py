"""Model-side speed: routing overhead, auto against always, batched generation, candidate encoding.

- direct_path_speed_ratio: queries/s of auto mode on queries that route direct, against a plain one-pass
  embedding of the same queries (the backbone's forward pass and pooling, no routing logic). The paper's
  implementation runs its direct path at 0.53 of plain embedding speed; ours routes and embeds in one pass.
- auto against always-reason on a mixed set (simple and complex queries): queries/s and tokens per query.
- batched greedy CoT (the routed subset decoded together on one KV cache) against one query at a time.
- candidate_overhead: encode_candidates against the bare forward passes of the same batches, minus 1; and
  batched candidate encoding against one at a time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.common import alternate, timed
from trace_core.embed_pool import to_candidate, to_query
from trace_core.encoder import Encoder
from trace_core.instructions import instructions_for
from trace_core.mbeir import discover_pairs, load_pair, read_cot_labels


def _queries(root: Path, name: str, n: int, route: str | None = None):
    """Up to n test queries of a pair (only those labelled `route`, when given) and n of its candidates."""
    instructions = instructions_for(root)
    (pair,) = discover_pairs(root, "test", name)
    queries, pool, _ = load_pair(pair)
    if route is not None:
        labels = read_cot_labels(pair.query_file)
        queries = [q for q in queries if labels[q.qid][0] == route]
    prompt = instructions.get(queries[0].modality, pool[0].modality, queries[0].dataset_id)[0]
    return [to_query(q, root, prompt) for q in queries[:n]], [to_candidate(c, root) for c in pool[:n]]


def run(encoder: Encoder, root: Path, n: int, repeats: int, bs: int) -> dict:
    bb = encoder.backbone
    simple, cands = _queries(root, "emoji_task0", n)  # text -> emoji, labelled direct
    complex_, _ = _queries(root, "emoji_task2", n, route="reason")  # edits whose target is not written out
    routes = [r.route for r in encoder.encode_queries(simple, batch_size=bs)]
    direct = [q for q, r in zip(simple, routes, strict=True) if r == "direct"]

    def plain_queries():  # the bare embedding pass: forward, last position, normalise
        for i in range(0, len(direct), bs):
            out = bb.prefill([encoder.render_query(q) for q in direct[i : i + bs]], with_logits=False)
            torch.nn.functional.normalize(out.hidden, dim=-1)

    def auto_queries():
        encoder.encode_queries(direct, reasoning="auto", batch_size=bs)

    auto_queries(), plain_queries()  # warm-up
    t_auto, t_plain = alternate(auto_queries, plain_queries, repeats)

    # auto against always on a mixed set
    mixed = [q for pair in zip(simple[: n // 2], complex_[: n // 2], strict=True) for q in pair]
    res_auto = encoder.encode_queries(mixed, reasoning="auto", batch_size=bs)
    res_always = encoder.encode_queries(mixed, reasoning="always", batch_size=bs)
    t_mixed_auto, t_mixed_always = alternate(lambda: encoder.encode_queries(mixed, "auto", batch_size=bs),
                                             lambda: encoder.encode_queries(mixed, "always", batch_size=bs),
                                             max(1, repeats // 2))

    # batched generation against one by one, on the queries the model routes to reasoning
    reasoned = [q for q, r in zip(mixed, res_auto, strict=True) if r.route == "reason"][:bs]
    t_gen_batched = t_gen_single = float("nan")
    if reasoned:
        t_gen_batched, t_gen_single = alternate(
            lambda: encoder.encode_queries(reasoned, "auto", batch_size=len(reasoned)),
            lambda: encoder.encode_queries(reasoned, "auto", batch_size=1), max(1, repeats // 2))

    def bare_candidates():
        for i in range(0, len(cands), bs):
            bb.prefill([encoder.render_candidate(c) for c in cands[i : i + bs]], with_logits=False)

    t_ours, t_bare = alternate(lambda: encoder.encode_candidates(cands, batch_size=bs), bare_candidates, repeats)
    t_cand_single = timed(lambda: encoder.encode_candidates(cands, batch_size=1))

    def tokens(results):
        return sum(r.cot_tokens for r in results) / len(results)

    return {
        "direct_queries": len(direct),
        "auto_direct_queries_per_s": len(direct) / t_auto,
        "plain_embedding_queries_per_s": len(direct) / t_plain,
        "direct_path_speed_ratio": t_plain / t_auto,
        "mixed_queries": len(mixed),
        "mixed_auto_reason_rate": sum(r.route == "reason" for r in res_auto) / len(mixed),
        "mixed_auto_queries_per_s": len(mixed) / t_mixed_auto,
        "mixed_always_queries_per_s": len(mixed) / t_mixed_always,
        "mixed_auto_speedup_over_always": t_mixed_always / t_mixed_auto,
        "mixed_auto_cot_tokens_per_query": tokens(res_auto),
        "mixed_always_cot_tokens_per_query": tokens(res_always),
        "routed_reasoning_queries": len(reasoned),
        "generation_batched_queries_per_s": len(reasoned) / t_gen_batched if reasoned else float("nan"),
        "generation_one_by_one_queries_per_s": len(reasoned) / t_gen_single if reasoned else float("nan"),
        "generation_batching_speedup": t_gen_single / t_gen_batched if reasoned else float("nan"),
        "candidates": len(cands),
        "candidates_per_s": len(cands) / t_ours,
        "candidates_one_by_one_per_s": len(cands) / t_cand_single,
        "candidate_batching_speedup": t_cand_single / t_ours,
        "bare_forward_candidates_per_s": len(cands) / t_bare,
        "candidate_overhead": t_ours / t_bare - 1,
    }
