"""Plotly figures: pure functions from a DataFrame to a figure."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def reasoning_vs_difficulty(bands: pd.DataFrame, k: int = 5) -> go.Figure:
    """Bars: reasoning rate per difficulty band; lines: R@k direct, taken, always reason."""
    fig = go.Figure()
    fig.add_bar(x=bands["difficulty"].astype(str), y=bands["reason rate"], name="reasoning rate",
                marker_color="#f59e0b", yaxis="y")
    for col, colour in ((f"R@{k} direct", "#1d4ed8"), (f"R@{k} (route taken)", "#059669"),
                        (f"R@{k} always reason", "#b91c1c")):
        if col in bands:
            fig.add_scatter(x=bands["difficulty"].astype(str), y=bands[col], name=col, mode="lines+markers",
                            line={"color": colour})
    fig.update_layout(title="When does the model reason? (difficulty = gold rank of the direct embedding)",
                      yaxis={"title": "rate", "range": [0, 1.05]}, xaxis={"title": "difficulty band"},
                      legend={"orientation": "h", "y": -0.25}, margin={"t": 50, "b": 10})
    return fig


def cost_benefit(sweep: pd.DataFrame, k: int = 5) -> go.Figure:
    """Recall@k against mean generated tokens, one point per routing bias; the default (bias 0) marked."""
    fig = go.Figure()
    fig.add_scatter(x=sweep["mean generated tokens"], y=sweep[f"R@{k}"], mode="lines+markers", name="bias sweep",
                    text=[f"bias {b:+.2f}, reason rate {r:.2f}" for b, r in zip(sweep["bias"],
                                                                               sweep["reason rate"], strict=True)],
                    hovertemplate="%{text}<br>tokens %{x:.1f}<br>R@k %{y:.3f}<extra></extra>")
    zero = sweep.iloc[(sweep["bias"].abs()).argmin()]
    fig.add_scatter(x=[zero["mean generated tokens"]], y=[zero[f"R@{k}"]], mode="markers", name="bias 0 (auto)",
                    marker={"size": 14, "symbol": "star", "color": "#b91c1c"})
    fig.update_layout(title=f"Cost-benefit of reasoning: R@{k} against generated tokens per query",
                      xaxis={"title": "mean generated CoT tokens per query"}, yaxis={"title": f"R@{k}"},
                      margin={"t": 50, "b": 10})
    return fig


def per_band_cost(bands: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    fig.add_bar(x=bands["difficulty"].astype(str), y=bands["mean CoT tokens"], name="mean CoT tokens")
    fig.add_scatter(x=bands["difficulty"].astype(str), y=bands["mean latency (s)"], name="mean latency (s)",
                    yaxis="y2", mode="lines+markers")
    fig.update_layout(title="CoT length and latency per difficulty band", yaxis={"title": "tokens"},
                      yaxis2={"title": "seconds", "overlaying": "y", "side": "right"}, margin={"t": 50, "b": 10})
    return fig
