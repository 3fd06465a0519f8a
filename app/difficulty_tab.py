"""Reasoning vs difficulty tab: when does the model choose to reason, and does it pay off?"""

from __future__ import annotations

import textwrap

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

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

from . import downloads
from .services import Services

COLUMNS = ["pair", "qid", "query_txt", "route", "cot_tokens", "gold_rank_direct", "gold_rank", "gold_rank_always",
           "cot"]


# Readable headers for the tables of this tab (the analysis tables use column names).
HEADERS = {"pair": "task", "qid": "query id", "query_txt": "query", "route": "route", "cot_tokens": "CoT tokens",
           "gold_rank_direct": "gold rank direct", "gold_rank": "gold rank (route taken)",
           "gold_rank_always": "gold rank always reason", "outcome": "outcome", "cot": "chain of thought",
           "reason rate": "reason rate"}
# Relative widths of the band listing's columns: the query and its chain of thought get the room.
WIDTHS = {"task": 12, "query id": 7, "query": 19, "route": 6, "CoT tokens": 6, "gold rank direct": 7,
          "gold rank (route taken)": 7, "gold rank always reason": 7, "outcome": 10, "chain of thought": 19}


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """A table with readable column headers (no snake_case), for display."""
    return table.rename(columns=HEADERS)


def fit_title(fig: go.Figure, width: int = 52) -> go.Figure:
    """The figure's title wrapped onto short lines, so that it is not cut in a half-width plot."""
    title = fig.layout.title.text or ""
    lines = textwrap.wrap(title, width)
    fig.update_layout(title={"text": "<br>".join(lines), "font": {"size": 15}},
                      margin={"t": 40 + 20 * len(lines)})
    return fig


def band_listing(table: pd.DataFrame, band: str, outcome: str | None = None, k: int = 5) -> pd.DataFrame:
    """The queries of a band, with readable headers."""
    return readable(band_queries(table, band, outcome, k))


def _widths(shown: pd.DataFrame) -> list[str]:
    w = [WIDTHS.get(c, 8) for c in shown.columns]
    return [f"{100 * x / sum(w):.1f}%" for x in w]


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
    # Each figure with its downloads: PNG and SVG in the plot's toolbar, the table it is drawn from as CSV.
    with gr.Row():
        with gr.Column():
            downloads.figure(fit_title(reasoning_vs_difficulty(bands, k)), bands, "reasoning vs difficulty",
                             "fig-reasoning-vs-difficulty")
        if "gold_rank_always" in table:
            with gr.Column():
                sweep = bias_sweep(table, k=k)
                downloads.figure(fit_title(cost_benefit(sweep, k)), sweep, "cost-benefit of reasoning",
                                 "fig-cost-benefit")
    with gr.Row():
        with gr.Column():
            downloads.figure(fit_title(per_band_cost(bands)), bands, "CoT length and latency per band",
                             "fig-per-band-cost")
        with gr.Column():
            gr.Markdown(f"**Routing outcomes** (reasoning helped = a hit at R@{k} with the CoT, a miss without):")
            if "gold_rank_always" in table:
                gr.Dataframe(outcome_table(table, k), interactive=False, wrap=True, elem_classes="fit-table")
    gr.Markdown("**Per task**")
    gr.Dataframe(readable(by_task(table, k).round(3)), interactive=False, wrap=True, elem_classes="fit-table")
    gr.Markdown("### Queries of a band")
    with gr.Row():
        band = gr.Dropdown(["all", *BAND_ORDER], value="rank > 100", label="difficulty band")
        outcomes = ["all"] + (sorted(outcome_of(table, k).unique()) if "gold_rank_always" in table else [])
        outcome = gr.Dropdown(outcomes, value="all", label="outcome")
    first = band_listing(table, "rank > 100", None, k)
    listing = gr.Dataframe(first, interactive=False, wrap=True, max_height=520, column_widths=_widths(first),
                           elem_classes="fit-table")
    band.change(lambda b, o: band_listing(table, b, o, k), [band, outcome], listing, api_visibility="private")
    outcome.change(lambda b, o: band_listing(table, b, o, k), [band, outcome], listing,
                   api_visibility="private")
