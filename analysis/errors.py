"""Error inspection: which queries fail, and did reasoning move the gold candidate up or down?

Input: the per-query table of an evaluation run (`queries.parquet` from `python -m trace_core.evaluate ...`),
one row per query. Gold ranks are exact, over the whole pool, and floats: NaN means no positive of the
query is in the pool (such a query is never counted as a failure or a change: there is nothing to find).

Words used below: *direct* is the embedding read at once (free from the same forward pass, whatever the
route); *final* is the route the model took; *always* is reasoning forced on (runs with --counterfactual).
A rank goes *up* when its number gets smaller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trace_core.records import check_k

VIEWS = ("all", "failures only", "reasoning hurt", "reasoning helped", "skipped but reasoning would have helped")
COUNTERFACTUAL_VIEWS = ("skipped but reasoning would have helped",)  # need gold_rank_always
QUERY_CHARS = 80


def available_views(table: pd.DataFrame) -> list[str]:
    """The views this table supports (the counterfactual one only when `gold_rank_always` is present)."""
    return [v for v in VIEWS if v not in COUNTERFACTUAL_VIEWS or "gold_rank_always" in table]


def shorten(text: str | None, n: int = QUERY_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def query_label(text: str | None, image: str | None) -> str:
    """The query as one short line: its text, marked when it comes with an image."""
    has_text = isinstance(text, str) and bool(text.strip())
    has_image = isinstance(image, str) and bool(image)  # NaN in the parquet for text-only queries
    if not has_text:
        return "[image only]" if has_image else "(empty query)"
    return ("[image] " if has_image else "") + shorten(text)


def top1_scores(table: pd.DataFrame) -> pd.Series:
    """Score of the top-1 candidate of each query on the route taken (NaN when the list is empty)."""
    return table["top_scores"].map(lambda s: float(s[0]) if s is not None and len(s) else np.nan).astype(float)


def top1_dids(table: pd.DataFrame) -> pd.Series:
    return table["top_dids"].map(lambda d: str(d[0]) if d is not None and len(d) else None)


def score_margin(table: pd.DataFrame) -> pd.Series:
    """gold score - top-1 score on the route taken: 0 when the gold is top-1, negative when it is beaten,
    NaN when the query has no gold in the pool."""
    margin = table["gold_score"].astype(float) - top1_scores(table)
    return margin.where(table["gold_rank"] != 1, 0.0)


def error_table(table: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """One row per query: where its gold candidate landed without and with the route taken, and by how much
    it lost to the top-1. `rank change` = direct - final: positive means reasoning moved the gold up."""
    k = check_k(k)
    out = pd.DataFrame({
        "pair": table["pair"].astype(str),
        "qid": table["qid"].astype(str),
        "query": [query_label(t, i) for t, i in zip(table["query_txt"], table["query_img_path"], strict=True)],
        "route": table["route"].astype(str),
        "CoT tokens": table["cot_tokens"].astype(int),
        "gold rank direct": table["gold_rank_direct"].astype(float),
        "gold rank final": table["gold_rank"].astype(float),
    }, index=table.index)
    if "gold_rank_always" in table:
        out["gold rank always reason"] = table["gold_rank_always"].astype(float)
    out["rank change"] = out["gold rank direct"] - out["gold rank final"]
    out[f"hit@{k}"] = (table["gold_rank"] <= k).astype(bool)  # NaN compares False: no gold is a miss
    out["score margin"] = score_margin(table)
    return out.reset_index(drop=True)


def error_mask(table: pd.DataFrame, view: str, k: int = 5) -> pd.Series:
    """Which rows of the per-query table a view keeps (a boolean Series on the table's index)."""
    k = check_k(k)
    final, direct = table["gold_rank"], table["gold_rank_direct"]
    reasoned = table["route"] == "reason"
    if view == "all":
        return pd.Series(True, index=table.index)
    if view == "failures only":  # gold in the pool but outside the top k on the route taken
        return final > k
    if view == "reasoning hurt":
        return reasoned & (final > direct)
    if view == "reasoning helped":
        return reasoned & (final < direct)
    if view == "skipped but reasoning would have helped":
        if "gold_rank_always" not in table:
            raise ValueError(f"the view {view!r} needs a run with --counterfactual (column gold_rank_always); "
                             f"this table has none. Available views: {', '.join(available_views(table))}.")
        always = table["gold_rank_always"]
        return (~reasoned) & (always < direct) & (always <= k) & ~(direct <= k)
    raise ValueError(f"unknown view {view!r}; choose one of: {', '.join(available_views(table))}.")


def filter_errors(table: pd.DataFrame, view: str = "all", pair: str | None = None, k: int = 5,
                  only: Iterable[Sequence[str]] | None = None) -> pd.DataFrame:
    """The error table (see `error_table`) of the queries a view keeps, for one pair or all (None / "all"),
    and, when `only` is given, among those (pair, query id) keys alone (a selection on the embedding map)."""
    mask = error_mask(table, view, k)
    if pair is not None and pair != "all":
        pairs = set(table["pair"])
        if pair not in pairs:
            raise ValueError(f"unknown task {pair!r}; the table has: {', '.join(sorted(pairs))}.")
        mask &= table["pair"] == pair
    if only is not None:
        mask &= query_key_mask(table, only)
    return error_table(table[mask], k)


def query_key_mask(table: pd.DataFrame, keys: Iterable[Sequence[str]]) -> pd.Series:
    """Which rows of the per-query table are one of these (pair, query id) keys."""
    wanted = {(str(p), str(q)) for p, q in keys}
    key = zip(table["pair"].astype(str), table["qid"].astype(str), strict=True)
    return pd.Series([k in wanted for k in key], index=table.index, dtype=bool)


@dataclass
class QueryDetail:
    """Everything the detail view shows about one query. Ranks and scores are NaN when there is no gold."""

    pair: str
    qid: str
    query_text: str | None
    query_image: str | None  # relative to the data root
    instruction: str
    route: str
    p_emb: float
    cot: str
    cot_tokens: int
    stop_reason: str  # "direct", "emb" (the model ended its CoT), "max_tokens" or "eos" (<|emb|> forced)
    positives: list[str]  # every gold did of the query (some may be outside the pool)
    gold_did: str | None  # the best-ranked positive on the route taken
    gold_score: float
    gold_score_direct: float
    top1_did: str | None
    top1_score: float
    margin: float  # gold_score - top1_score; 0 when the gold is top-1
    rank_direct: float
    rank_final: float
    rank_always: float | None  # None when the run had no --counterfactual
    top_dids: list[str] = field(default_factory=list)
    top_scores: list[float] = field(default_factory=list)
    row: dict = field(default_factory=dict)  # the raw row, as it is

    @property
    def gold_is_top1(self) -> bool:
        return self.rank_final == 1

    @property
    def rank_change(self) -> float:
        return self.rank_direct - self.rank_final


def find_query(table: pd.DataFrame, pair: str | None, qid: str) -> pd.Series:
    """The row of one query; `pair` may be None when the qid is unique across pairs. ValueError if unknown."""
    qid = str(qid).strip()
    rows = table[table["qid"].astype(str) == qid]
    if pair is not None and pair != "all":
        rows = rows[rows["pair"] == pair]
    if rows.empty:
        where = f" in task {pair!r}" if pair is not None and pair != "all" else ""
        raise ValueError(f"no query with id {qid!r}{where} in the per-query table.")
    if len(rows) > 1:
        raise ValueError(f"query id {qid!r} is in several tasks ({', '.join(sorted(rows['pair']))}); pick one.")
    return rows.iloc[0]


def _float(x: Any) -> float:
    return float(x) if x is not None else np.nan


def _text(x: Any) -> str:
    return x if isinstance(x, str) else ""


def query_detail(table: pd.DataFrame, pair: str | None, qid: str) -> QueryDetail:
    """The detail of one query (see `QueryDetail`). ValueError for an unknown (pair, qid)."""
    r = find_query(table, pair, qid)
    top_dids = [str(d) for d in (r["top_dids"] if r["top_dids"] is not None else [])]
    top_scores = [float(s) for s in (r["top_scores"] if r["top_scores"] is not None else [])]
    top1_did = top_dids[0] if top_dids else None
    top1_score = top_scores[0] if top_scores else np.nan
    rank_final = _float(r["gold_rank"])
    gold_score = _float(r["gold_score"])
    margin = 0.0 if rank_final == 1 else gold_score - top1_score
    rank_always = _float(r["gold_rank_always"]) if "gold_rank_always" in r.index else None
    gold = r["gold_did"]
    return QueryDetail(
        pair=str(r["pair"]),
        qid=str(r["qid"]),
        query_text=r["query_txt"] if isinstance(r["query_txt"], str) else None,
        query_image=r["query_img_path"] if isinstance(r["query_img_path"], str) and r["query_img_path"] else None,
        instruction=_text(r["instruction"]),
        route=str(r["route"]),
        p_emb=_float(r["p_emb"]),
        cot=_text(r["cot"]),
        cot_tokens=int(r["cot_tokens"]),
        stop_reason=_text(r["stop_reason"]) if "stop_reason" in r.index else "",
        positives=[str(p) for p in (r["positives"] if r["positives"] is not None else [])],
        gold_did=str(gold) if isinstance(gold, str) and gold else None,
        gold_score=gold_score,
        gold_score_direct=_float(r["gold_score_direct"]),
        top1_did=top1_did,
        top1_score=top1_score,
        margin=margin,
        rank_direct=_float(r["gold_rank_direct"]),
        rank_final=rank_final,
        rank_always=rank_always,
        top_dids=top_dids,
        top_scores=top_scores,
        row=r.to_dict(),
    )
