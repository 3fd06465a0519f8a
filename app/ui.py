"""The app factory: one Blocks, one tab per question a user asks."""

from __future__ import annotations

import html
import json
from pathlib import Path

import gradio as gr

from .benchmark_tab import build_benchmark_tab
from .building import status_markdown
from .difficulty_tab import build_difficulty_tab
from .errors_tab import build_errors_tab
from .first_visit import about_model, default_task, reasoning_rates
from .links import KEYS, LinkSlots, LinkTask, View, parse_view, view_of, view_query
from .map_tab import MapLink, build_map_tab, register_map_api
from .search_tab import build_search_tab
from .services import Services
from .waiting import build_when_ready, pending_stage
from .walkthrough_tab import build_walkthrough_tab

# One tab per question a user asks, in the order a visitor meets them.
TABS = [("Search", build_search_tab), ("Reasoning vs difficulty", build_difficulty_tab),
        ("Embedding map", build_map_tab), ("Error inspection", build_errors_tab), ("Walkthrough", build_walkthrough_tab),
        ("Benchmark", build_benchmark_tab)]
CSS_FILE = Path(__file__).resolve().parents[1] / "assets" / "app.css"
# Each tab's id in a deep link (?tab=...): short, and stable when a tab's title is reworded.
TAB_IDS = {"Search": "search", "Reasoning vs difficulty": "difficulty", "Embedding map": "map",
           "Error inspection": "errors", "Walkthrough": "walkthrough", "Benchmark": "benchmark"}

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
    # Gradio's copies of the files events hand out (exports, CSVs) and of visitors' uploads are deleted a day
    # after they were made (checked hourly); the page's own defaults are kept. Our originals: app.scratch.
    with gr.Blocks(title="TRACE: reason, then embed", delete_cache=(3600, 86400)) as demo:
        gr.Markdown("# TRACE: a retriever that thinks before it embeds\n" + PLAIN, elem_classes="intro")
        gr.Markdown(model_notice(services) + "".join(f"\n\n⚠ {note}" for note in services.notes),
                    elem_classes="demo-notice")
        if services.build is not None:
            build_status(services)
        view_link = gr.Textbox(label="Link to this view", info=LINK_NOTE, buttons=["copy"], interactive=False,
                               max_lines=1, elem_id="view-link")
        link = MapLink.create()  # the map and the error table send each other the queries they show
        items: dict[str, gr.Tab] = {}
        slots: dict[str, LinkSlots] = {}  # what a deep link fills, by tab id (Search, Walkthrough)
        with gr.Tabs() as tabs:
            for name, build in TABS:
                with gr.Tab(name, id=TAB_IDS[name]) as items[TAB_IDS[name]]:
                    args = (services, link) if build in (build_map_tab, build_errors_tab) else (services,)
                    if (stage := pending_stage(services, TAB_IDS[name])) is not None:
                        # its data is still being built: the tab fills in when it is (app/waiting.py)
                        build_when_ready(services, stage, lambda build=build, args=args: build(*args))
                    elif isinstance(filled := build(*args), LinkSlots):
                        slots[TAB_IDS[name]] = filled
        wire_deep_links(services, demo, tabs, items, slots, view_link)
        register_map_api(services)  # here, not in the map tab: that one may be built late (gr.render)
    return demo


# ------------------------------------------------------------------------------------------ deep links
LINK_NOTE = ("The tab, task, query text (or benchmark query), reasoning mode and routing bias are in the link. "
             "An image you uploaded is not: only a benchmark query's image is, by its id.")
# The address bar follows the view too (history.replaceState, no reload): what a teacher copies from it opens the
# same view, and a reload keeps it. The box holds the same link, to copy.
FOLLOW_ADDRESS = True
# The link in the box: the page's address with the link's own parameters replaced; any other one (Gradio's
# ?__theme=dark) stays. The box may hold a whole URL when two updates cross; only what follows its "?" is read.
# Nothing is built before the load event has read the link (LINK_READY_JS): with FOLLOW_ADDRESS, the inputs'
# first change events would otherwise rewrite the address the load event reads its parameters from.
LINK_JS = """(qs) => {
  if (!window.traceLinkRead) return window.location.href;
  const url = new URL(window.location.href);
  for (const key of KEYS) url.searchParams.delete(key);
  const s = qs || "";
  new URLSearchParams(s.includes("?") ? s.slice(s.indexOf("?") + 1) : s)
    .forEach((value, key) => url.searchParams.append(key, value));
  if (FOLLOW) window.history.replaceState(window.history.state, "", url);
  return url.toString();
}""".replace("KEYS", json.dumps(list(KEYS))).replace("FOLLOW", json.dumps(FOLLOW_ADDRESS))
LINK_READY_JS = "(qs) => { window.traceLinkRead = true; return (" + LINK_JS + ")(qs); }"


def wire_deep_links(services: Services, demo: gr.Blocks, tabs: gr.Tabs, items: dict[str, gr.Tab],
                    slots: dict[str, LinkSlots], box: gr.Textbox) -> None:
    """On load, the link's view (`links.parse_view`): its tab selected, its query in that tab's inputs (the
    tab runs it); a bad value is a warning and its default. Then the link follows every change of the view."""
    tab_ids = list(items)
    tasks = {n: LinkTask(t.takes_text, t.takes_image, frozenset(q.qid for q in t.queries))
             for n, t in services.tasks.items()}
    first = default_task(services) if tasks else ""
    current = gr.State(tab_ids[0])  # the selected tab: Gradio sends no tab with the other inputs
    fields = [c for s in slots.values() for c in s.fields]
    n = len(View.__dataclass_fields__) - 1  # the fields of a query tab: the view's, less the tab

    def current_link(tab: str, *values) -> str:
        per = {tab_id: values[i * n:(i + 1) * n] for i, tab_id in enumerate(slots)}
        return view_query(view_of(tab, *per[tab]) if tab in per else View(tab))

    def selects(tab_id: str):
        return lambda *values: (tab_id, current_link(tab_id, *values))

    quiet = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
    for tab_id, item in items.items():
        item.select(selects(tab_id), fields, [current, box], **quiet).then(None, box, box, js=LINK_JS, queue=False)
    gr.on([c.change for c in fields], current_link, [current, *fields], box, **quiet).then(
        None, box, box, js=LINK_JS, queue=False)

    def restore(request: gr.Request):
        params = dict(request.query_params) if request is not None and request.query_params else {}
        r = parse_view(params, tab_ids, tasks, first)
        for warning in r.warnings:
            gr.Warning(warning)
        asked = any(k in params for k in KEYS)  # a plain address leaves the inputs alone
        return (gr.Tabs(selected=r.view.tab), r.view.tab,
                *(r if asked and tab_id == r.view.tab else gr.skip() for tab_id in slots), view_query(r.view))

    demo.load(restore, None, [tabs, current, *(s.restore for s in slots.values()), box], show_progress="hidden",
              api_visibility="private").then(None, box, box, js=LINK_READY_JS, queue=False)


def build_status(services: Services) -> None:
    """What the server still builds in the background, with progress, refreshed every 2 s until it is done."""
    status = gr.Markdown(status_markdown(services.build), elem_classes="build-status")
    timer = gr.Timer(2.0)

    def tick():
        return status_markdown(services.build), gr.Timer(active=not services.build.finished)

    timer.tick(tick, None, [status, timer], api_visibility="private", show_progress="hidden")


def css() -> str | None:
    return CSS_FILE.read_text() if CSS_FILE.is_file() else None
