"""The app factory: one Blocks, one tab per question a user asks."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from .benchmark_tab import build_benchmark_tab
from .difficulty_tab import build_difficulty_tab
from .errors_tab import build_errors_tab
from .first_visit import about_model, reasoning_rates
from .map_tab import build_map_tab
from .search_tab import build_search_tab
from .services import Services
from .walkthrough_tab import build_walkthrough_tab

# One tab per question a user asks, in the order a visitor meets them.
TABS = [("Search", build_search_tab), ("Reasoning vs difficulty", build_difficulty_tab),
        ("Embedding map", build_map_tab), ("Error inspection", build_errors_tab), ("Walkthrough", build_walkthrough_tab),
        ("Benchmark", build_benchmark_tab)]
CSS_FILE = Path(__file__).resolve().parents[1] / "assets" / "app.css"

# The paper, as the project's notes name it: its title and arXiv identifier (they give no URL, so none is made up).
PAPER = "*TRACE: Task-adaptive Reasoning And Compressing Embeddings* (arXiv 2603.02929, March 2026)"

PLAIN = (
    "**In plain words:** you give a query (words, a picture, or both) and pick a task. The model turns the "
    "query into a vector (an *embedding*) and shows the items of that task's collection whose vectors are "
    "closest. TRACE's idea: for a hard query the model may first write a short *chain of thought* about what it "
    "is looking for, then embed the query together with that thought; for an easy query it embeds at once. It "
    "makes this choice itself, at its first step (technically: the embedding is its hidden state just before "
    "it writes the special token `<|emb|>`; the collection's items are embedded once, never with reasoning). "
    "Paper: " + PAPER + "."
)


def reasoning_sentence(services: Services) -> str:
    """Which tasks the loaded model reasons on by itself, from its evaluation; "" when none is loaded."""
    rates = reasoning_rates(services)
    if not rates:
        return ""
    tasks = services.tasks
    reasons = sorted(((r, n) for n, r in rates.items() if r >= 0.05), reverse=True)
    if not reasons:
        return "In its evaluation it never chose to reason: it embeds every task's queries at once."
    listed = "; ".join(f"{html.escape(tasks[n].label)}: {r:.0%} of its queries" for r, n in reasons)
    return (f"Left to itself (reasoning *auto*), it reasons on {listed}. It embeds the other tasks' queries at "
            "once.")


def model_notice(services: Services) -> str:
    about = about_model(services)
    parts = f" ({html.escape(about.parts)})" if about.parts else ""
    if about.demo:
        head = (f"**Demo model.** This is `{about.name}`{parts}, a small TRACE that this project trained itself, "
                "on CPU, on a small offline corpus. It is **not** the paper's model (a 7B Qwen2.5-VL, whose "
                "weights are not published) and its scores are far below the paper's.")
    else:
        head = f"**Model:** `{about.name}`."
    return " ".join(s for s in (head, reasoning_sentence(services)) if s)


def build_app(services: Services) -> gr.Blocks:
    with gr.Blocks(title="TRACE: reason, then embed") as demo:
        gr.Markdown("# TRACE: a retriever that thinks before it embeds\n" + PLAIN, elem_classes="intro")
        gr.Markdown(model_notice(services) + "".join(f"\n\n⚠ {note}" for note in services.notes),
                    elem_classes="demo-notice")
        for name, build in TABS:
            with gr.Tab(name):
                build(services)
    return demo


def css() -> str | None:
    return CSS_FILE.read_text() if CSS_FILE.is_file() else None
