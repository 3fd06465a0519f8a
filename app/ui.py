"""The app factory: one Blocks, one tab per question a user asks."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .benchmark_tab import build_benchmark_tab
from .difficulty_tab import build_difficulty_tab
from .errors_tab import build_errors_tab
from .map_tab import build_map_tab
from .search_tab import build_search_tab
from .services import Services
from .walkthrough_tab import build_walkthrough_tab

# One tab per question a user asks, in the order a visitor meets them.
TABS = [("Search", build_search_tab), ("Reasoning vs difficulty", build_difficulty_tab),
        ("Embedding map", build_map_tab), ("Error inspection", build_errors_tab), ("Walkthrough", build_walkthrough_tab),
        ("Benchmark", build_benchmark_tab)]
CSS_FILE = Path(__file__).resolve().parents[1] / "assets" / "app.css"


def build_app(services: Services) -> gr.Blocks:
    fp = services.fingerprint
    with gr.Blocks(title="TRACE: reason, then embed") as demo:
        gr.Markdown(
            "# TRACE: a retriever that thinks before it embeds\n"
            f"Model: `{Path(fp['model_id']).name}`. For each query the model either emits `<|emb|>` at once "
            "(direct route) or first writes a chain of thought; the embedding is the hidden state just before "
            "`<|emb|>`. Candidates never reason."
            + "".join(f"\n\n> ⚠ {note}" for note in services.notes)
        )
        for name, build in TABS:
            with gr.Tab(name):
                build(services)
    return demo


def css() -> str | None:
    return CSS_FILE.read_text() if CSS_FILE.is_file() else None
