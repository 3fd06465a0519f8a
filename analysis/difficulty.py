"""When does the model reason, and does it help? Functions over the per-query table of an evaluation run.

Input: `queries.parquet` from `python -m trace_core.evaluate ... --counterfactual`, one row per query with
`route`, `emb_margin`, `cot_tokens`, `latency_s`, `gold_rank` (the route taken), `gold_rank_direct` (the
direct route's embedding, free from the same prefill) and `gold_rank_always` (reasoning forced on).

Difficulty is measured, not labelled: a query's difficulty is the gold rank its *direct* embedding gets.
Rank 1 is easy; a gold item outside the top 20 is hard. Because the encoder's route rule
(`trace_core.encoder.prefers_direct`) depends only on `emb_margin` and the bias, and a reasoned query's CoT does
not depend on the bias, any bias can be replayed exactly from one run by that same rule: the gold rank is
`gold_rank_direct` where the query would go direct and `gold_rank_always` where it would reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trace_core.routing import prefers_direct

BANDS = [(1, 1, "rank 1"), (2, 5, "rank 2-5"), (6, 20, "rank 6-20"), (21, 100, "rank 21-100"),
         (101, np.inf, "rank > 100")]
BAND_ORDER = [b[2] for b in BANDS]


def difficulty_band(gold_rank_direct: pd.Series) -> pd.Series:
    """Band of each query by the direct route's gold rank ("no gold" when no positive is in the pool)."""
    out = pd.Series("no gold", index=gold_rank_direct.index, dtype=object)
    for lo, hi, name in BANDS:
        out[(gold_rank_direct >= lo) & (gold_rank_direct <= hi)] = name
    return pd.Categorical(out, categories=[*BAND_ORDER, "no gold"], ordered=True)


def with_bands(table: pd.DataFrame) -> pd.DataFrame:
    t = table.copy()
    t["difficulty"] = difficulty_band(t["gold_rank_direct"])
    t["reasoned"] = t["route"] == "reason"
    return t


def by_band(table: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Per difficulty band: queries, reasoning rate, R@k on the route taken, without and with reasoning,
    mean CoT tokens and latency."""
    t = with_bands(table)
    rows = []
    for band, g in t.groupby("difficulty", observed=True):
        row = {"difficulty": band, "queries": len(g), "reason rate": g["reasoned"].mean(),
               f"R@{k} (route taken)": (g["gold_rank"] <= k).mean(),
               f"R@{k} direct": (g["gold_rank_direct"] <= k).mean(),
               "mean CoT tokens": g["cot_tokens"].mean(), "mean latency (s)": g["latency_s"].mean()}
        if "gold_rank_always" in g:
            row[f"R@{k} always reason"] = (g["gold_rank_always"] <= k).mean()
        rows.append(row)
    return pd.DataFrame(rows)


def by_task(table: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Per pair: reasoning rate and R@k direct / taken / always."""
    rows = []
    for pair, g in table.groupby("pair"):
        row = {"pair": pair, "queries": len(g), "reason rate": (g["route"] == "reason").mean(),
               f"R@{k} direct": (g["gold_rank_direct"] <= k).mean(),
               f"R@{k} (route taken)": (g["gold_rank"] <= k).mean()}
        if "gold_rank_always" in g:
            row[f"R@{k} always reason"] = (g["gold_rank_always"] <= k).mean()
        rows.append(row)
    return pd.DataFrame(rows)


def outcome_table(table: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The 2x2 of routing outcomes at R@k: did the model reason, and would reasoning change the hit?

    "helped"/"hurt" compare the hit with reasoning (always) against the hit without (direct) for each query.
    """
    if "gold_rank_always" not in table:
        raise ValueError("the 2x2 needs a run with --counterfactual (gold_rank_always)")
    hit_direct = table["gold_rank_direct"] <= k
    hit_reason = table["gold_rank_always"] <= k
    helps = hit_reason & ~hit_direct
    hurts = hit_direct & ~hit_reason
    reasoned = table["route"] == "reason"
    cells = {
        ("reasoned", "reasoning helped"): int((reasoned & helps).sum()),
        ("reasoned", "reasoning hurt"): int((reasoned & hurts).sum()),
        ("reasoned", "no change"): int((reasoned & ~helps & ~hurts).sum()),
        ("skipped", "reasoning would have helped"): int((~reasoned & helps).sum()),
        ("skipped", "skipping was right (would hurt)"): int((~reasoned & hurts).sum()),
        ("skipped", "no change"): int((~reasoned & ~helps & ~hurts).sum()),
    }
    return pd.DataFrame([{"route": a, "outcome": b, "queries": n} for (a, b), n in cells.items()])


def outcome_of(table: pd.DataFrame, k: int = 5) -> pd.Series:
    """The outcome cell of each query (for listing a cell's queries)."""
    hit_direct = table["gold_rank_direct"] <= k
    hit_reason = table["gold_rank_always"] <= k
    reasoned = table["route"] == "reason"
    out = np.where(hit_reason & ~hit_direct, "helped", np.where(hit_direct & ~hit_reason, "hurt", "no change"))
    return pd.Series([("reasoned: " if r else "skipped: ") + o for r, o in zip(reasoned, out, strict=True)],
                     index=table.index)


def bias_sweep(table: pd.DataFrame, biases: np.ndarray | None = None, k: int = 5) -> pd.DataFrame:
    """Recall@k against mean generated tokens as the routing bias moves (replayed exactly, see module doc).

    Generated tokens of a reasoned query are its always-reason CoT length (`cot_tokens_always`).
    """
    if "gold_rank_always" not in table:
        raise ValueError("the sweep needs a run with --counterfactual (gold_rank_always)")
    margin = table["emb_margin"].to_numpy()
    if biases is None:
        finite = margin[np.isfinite(margin)]
        lo, hi = (np.min(-finite) - 1, np.max(-finite) + 1) if len(finite) else (-1, 1)
        biases = np.unique(np.concatenate([np.linspace(lo, hi, 41), [0.0]]))
    rows = []
    for b in biases:
        direct = prefers_direct(margin, b)  # [Q] the encoder's own rule, on the stored margins
        rank = np.where(direct, table["gold_rank_direct"], table["gold_rank_always"])
        tokens = np.where(direct, 0, table["cot_tokens_always"])
        rows.append({"bias": float(b), "reason rate": float((~direct).mean()), f"R@{k}": float((rank <= k).mean()),
                     "mean generated tokens": float(tokens.mean())})
    return pd.DataFrame(rows)
