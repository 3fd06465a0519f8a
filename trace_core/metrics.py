"""Retrieval metrics as M-BEIR reports them.

UniIR's "Recall@k" is hit-based: a query scores 1 if *any* of its positives is among the top k candidates,
else 0, and the pair's score is the mean over its queries. It is not the fraction of positives retrieved, so
a query with three positives counts the same as one with a single positive. Scores here are fractions in
[0, 1]; papers print them as percentages.

The headline of a pair is R@5, except Fashion200K and FashionIQ whose headline is R@10 (their positives are
near-duplicates of many other products); the M-BEIR score is the mean of the 16 pairs' headlines.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

from .records import check_k

logger = logging.getLogger(__name__)

# Headline cut-off per M-BEIR dataset (lower-case name as in the file names).
HEADLINE_K: dict[str, int] = {
    "visualnews": 5,
    "mscoco": 5,
    "fashion200k": 10,
    "webqa": 5,
    "edis": 5,
    "nights": 5,
    "oven": 5,
    "infoseek": 5,
    "fashioniq": 10,
    "cirr": 5,
}
# Cut-off for datasets not in HEADLINE_K (new datasets are reported like most of M-BEIR).
DEFAULT_HEADLINE_K = 5
# Pass as ``key`` to ``mean_of_pairs`` to average each pair's own headline metric.
HEADLINE = "headline"


def hit_at_k(ranked_ids: Sequence[str], positives: Collection[str], k: int) -> float:
    """1.0 if any positive is among the first k ranked ids, else 0.0 (no positives: 0.0, as in UniIR)."""
    k = check_k(k)
    pos = positives if isinstance(positives, set | frozenset | Mapping) else set(positives)
    return 1.0 if any(did in pos for did in ranked_ids[:k]) else 0.0


def recall_at_k(ranked: Sequence[Sequence[str]], positives: Sequence[Collection[str]], k: int) -> float:
    """Mean of ``hit_at_k`` over queries; ``ranked[i]`` and ``positives[i]`` belong to query i."""
    k = check_k(k)
    if len(ranked) != len(positives):
        raise ValueError(f"{len(ranked)} rankings but {len(positives)} positive sets")
    if not ranked:
        raise ValueError("recall of zero queries is undefined")
    return sum(hit_at_k(r, p, k) for r, p in zip(ranked, positives, strict=True)) / len(ranked)


def headline_k(pair_name: str) -> int:
    """Headline cut-off of a pair ("fashioniq_task7" -> 10, "cirr_task7" -> 5); a bare dataset name works."""
    dataset = pair_name.rsplit("_task", 1)[0].lower()
    return HEADLINE_K.get(dataset, DEFAULT_HEADLINE_K)


def headline_metric(pair_name: str) -> str:
    """Name of a pair's headline metric: "recall@5", or "recall@10" for Fashion200K and FashionIQ."""
    return f"recall@{headline_k(pair_name)}"


def mean_of_pairs(per_pair: Mapping[str, Mapping[str, float]], key: str) -> float:
    """Unweighted mean of one metric over pairs (M-BEIR averages pairs, not queries).

    ``key`` is a metric name such as "recall@5", or ``HEADLINE`` to take each pair's own headline metric.
    """
    if not per_pair:
        raise ValueError("mean over zero pairs is undefined")
    values: list[float] = []
    for pair, metrics in per_pair.items():
        name = headline_metric(pair) if key == HEADLINE else key
        if name not in metrics:
            raise KeyError(f"pair {pair} has no metric {name!r} (has: {', '.join(sorted(metrics))})")
        values.append(float(metrics[name]))
    return sum(values) / len(values)
