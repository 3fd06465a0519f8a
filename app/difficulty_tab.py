"""Reasoning vs difficulty tab: when does the model choose to reason, and does it pay off?"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from analysis.difficulty import (
    BAND_ORDER,
    bias_sweep,
    by_band,
    by_task,
    outcome_of,
    outcome_table,
    with_bands,
)
from analysis.figures import cost_benefit, per_band_cost, reasoning_vs_difficulty

from .services import Services

COLUMNS = ["pair", "qid", "query_txt", "route", "cot_tokens", "gold_rank_direct", "gold_rank", "gold_rank_always",
           "cot"]


def band_queries(table: pd.DataFrame, band: str, outcome: str | None = None, k: int = 5) -> pd.DataFrame:
    t = with_bands(table)
    if "gold_rank_always" in t:
        t["outcome"] = outcome_of(t, k)
    if band and band != "all":
        t = t[t["difficulty"].astype(str) == band]
    if outcome and outcome != "all" and "outcome" in t:
        t = t[t["outcome"] == outcome]
    cols = [c for c in [*COLUMNS[:-1], "outcome", "cot"] if c in t]
    return t[cols].reset_index(drop=True)


def build_difficulty_tab(services: Services) -> None:
    table = services.queries
    if table is None:
        gr.Markdown("No per-query table is loaded for this model. Produce one with "
                    "`python -m trace_core.evaluate ... --counterfactual` and start the app with "
                    "`--analysis OUT/queries.parquet`.")
        return
    k = 5
    bands = by_band(table, k)
    gr.Markdown(
        f"Difficulty is measured, not labelled: the rank the gold candidate gets from the query's **direct** "
        f"embedding (computed in the same forward pass whether or not the model then reasons). "
        f"{len(table)} benchmark queries; recall is R@{k}."
    )
    with gr.Row():
        gr.Plot(reasoning_vs_difficulty(bands, k))
        if "gold_rank_always" in table:
            gr.Plot(cost_benefit(bias_sweep(table, k=k), k))
    with gr.Row():
        gr.Plot(per_band_cost(bands))
        with gr.Column():
            gr.Markdown("**Routing outcomes** (reasoning helped = a hit at R@5 with the CoT, a miss without):")
            if "gold_rank_always" in table:
                gr.Dataframe(outcome_table(table, k), interactive=False)
            gr.Markdown("**Per task**")
            gr.Dataframe(by_task(table, k).round(3), interactive=False)
    gr.Markdown("### Queries of a band")
    with gr.Row():
        band = gr.Dropdown(["all", *BAND_ORDER], value="rank > 100", label="difficulty band")
        outcomes = ["all"] + (sorted(outcome_of(table, k).unique()) if "gold_rank_always" in table else [])
        outcome = gr.Dropdown(outcomes, value="all", label="outcome")
    listing = gr.Dataframe(band_queries(table, "rank > 100"), interactive=False, wrap=True)
    band.change(lambda b, o: band_queries(table, b, o, k), [band, outcome], listing)
    outcome.change(lambda b, o: band_queries(table, b, o, k), [band, outcome], listing)
