"""Search tab: a query in, the route, the chain of thought as it streams, and the ranked candidates out.

The use cases (search, compare) are `usecases.py`'s; this module renders their results and wires them to
components. The scriptable endpoints `search` and `compare` (gradio_client) return what the UI shows.
"""

from __future__ import annotations

import html
import json
import os
import tempfile

import gradio as gr
from gradio import FileData
from gradio.utils import get_upload_folder
from PIL import Image

from trace_core.records import REASONING_MODES, CotDelta, InputError, QueryResult

from .services import Services
from .usecases import Comparison, Hit, SearchResult, UserError, compare, open_api_image, search, stream_search


# ------------------------------------------------------------------------------------------ API
def api_image(services: Services, image) -> Image.Image | None:
    """The image of an API call, opened only from Gradio's upload folder or the data root."""
    return open_api_image(services, image, get_upload_folder())


def search_api(services: Services, query_text, query_image, task_name, reasoning="auto", top_k=10) -> dict:
    """What the `search` endpoint returns (JSON with the model fingerprint)."""
    img = api_image(services, query_image)
    return search(services, task_name, query_text, img, None, reasoning, top_k).to_json(services.fingerprint)


# ------------------------------------------------------------------------------------------ rendering
def comparison_markdown(c: Comparison) -> str:
    """Scores, gold ranks, and what entered and left the top k when reasoning is switched on."""
    off, on = c.off, c.on
    lines = ["| | without reasoning | with reasoning |", "|---|---|---|",
             f"| CoT tokens | 0 | {on.result.cot_tokens} |",
             f"| latency | {off.result.latency_s:.2f} s | {on.result.latency_s:.2f} s |",
             f"| top-1 | `{off.hits[0].did}` ({off.hits[0].score:.3f}) | `{on.hits[0].did}` ({on.hits[0].score:.3f}) |"]
    for (d, r1, s1), (_, r2, s2) in zip(off.gold, on.gold, strict=True):
        lines.append(f"| gold `{d}` | rank {r1} ({s1:.3f}) | rank {r2} ({s2:.3f}) |")
    lines += ["", f"Top-{c.k} overlap: **{c.overlap}/{c.k}**. Entered with reasoning: "
              f"{', '.join(c.entered) or 'none'}. Left: {', '.join(c.left) or 'none'}.", "",
              f"**CoT:** {html.escape(on.result.cot) or '(none)'}"]
    return "\n".join(lines)


def route_badge(result: QueryResult | None) -> str:
    if result is None:
        return "<div class='route-badge pending'>thinking…</div>"
    if result.route == "direct":
        word, cls = "direct: embedded at once", "direct"
    else:
        word, cls = "reasoned before embedding", "reason"
    if result.reasoning != "auto":
        word += f" (forced: {result.reasoning})"
    return (f"<div class='route-badge {cls}'>{word} · P(&lt;|emb|&gt; first) = {result.p_emb:.2f}</div>")


def stats_line(result: QueryResult) -> str:
    trunc = " (cap reached: `<|emb|>` forced)" if result.truncated else ""
    return f"{result.cot_tokens} CoT tokens{trunc} · {result.latency_s:.2f} s"


def gallery_items(hits: list[Hit]) -> list[tuple[str, str]]:
    return [(h.image, f"#{h.rank} · {h.score:.3f}{' · GOLD' if h.gold else ''} · {h.text or h.did}")
            for h in hits if h.image]


def hits_table(hits: list[Hit]) -> list[list]:
    return [[h.rank, round(h.score, 4), h.did, "✓" if h.gold else "", h.text or "(image)"] for h in hits]


def gold_summary(res: SearchResult, k: int) -> str:
    if not res.gold:
        return "Free query: no gold candidates to mark. Pick a benchmark query to see where its gold lands."
    d, r, s = res.gold[0]
    where = "in the top-k" if r <= k else f"outside the top-{k}"
    return f"Gold `{d}` is at rank **{r}** ({where}), score {s:.3f}; top-1 score {res.hits[0].score:.3f}."


def export_file(res: SearchResult, fingerprint: dict) -> str:
    fd, path = tempfile.mkstemp(prefix="trace-search-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(res.to_json(fingerprint), fh, indent=2)
    return path


# ------------------------------------------------------------------------------------------ UI
def build_search_tab(services: Services) -> None:
    tasks = services.tasks
    choices = [(t.label, name) for name, t in tasks.items()]
    first = next(iter(tasks))
    with gr.Row():
        with gr.Column(scale=2):
            task = gr.Dropdown(choices, value=first, label="Task")
            instruction = gr.Textbox(tasks[first].instructions[0], label="Instruction (editable)", lines=2)
            text = gr.Textbox(label="Query text", placeholder="e.g. an emoji of a red apple", lines=2)
            image = gr.Image(type="pil", label="Query image", height=180)
            with gr.Row():
                mode = gr.Radio(list(REASONING_MODES), value="auto", label="Reasoning")
                k = gr.Slider(1, 50, value=10, step=1, label="top-k")
            qid = gr.State("")
            with gr.Row():
                go = gr.Button("Search", variant="primary")
                cmp = gr.Button("Compare: reasoning off vs on")
            example = gr.Dropdown([], label="Benchmark query (gold marked)", allow_custom_value=False)
        with gr.Column(scale=3):
            badge = gr.HTML(route_badge(None).replace("thinking…", "no query yet"))
            cot = gr.Textbox(label="Chain of thought (streams as it is generated)", lines=4, interactive=False)
            stats = gr.Markdown()
            gold = gr.Markdown()
            gallery = gr.Gallery(label="Results", columns=5, height=260, allow_preview=False)
            table = gr.Dataframe(headers=["rank", "score", "id", "gold", "candidate"], label="Ranked candidates",
                                 interactive=False, wrap=True)
            comparison = gr.Markdown()
            export = gr.File(label="Export (JSON with the model fingerprint)")
    last_hits = gr.State([])

    def examples_for(task_name: str):
        t = tasks[task_name]
        items = []
        for q in t.queries[:60]:
            label = t.labels.get(q.qid, "")
            items.append((f"{q.qid} [{label or '?'}] {q.text or '(image only)'}"[:90], q.qid))
        return gr.update(choices=items, value=None), t.instructions[0], ""

    def pick_example(task_name: str, chosen: str | None):
        if not chosen:
            return gr.skip(), gr.skip(), ""
        q = next(q for q in tasks[task_name].queries if q.qid == chosen)
        img = Image.open(services.image_path(q.image_path)) if q.image_path else None
        return q.text or "", img, q.qid

    def run(task_name, instruction_text, text_in, image_in, mode_in, k_in, qid_in):
        so_far = ""
        try:
            for event in stream_search(services, task_name, text_in, image_in, instruction_text, mode_in, k_in,
                                       qid_in or None):
                if isinstance(event, CotDelta):
                    so_far += event.text
                    yield (route_badge(None), so_far, f"{event.n_tokens} tokens…", gr.skip(), gr.skip(),
                           gr.skip(), gr.skip(), gr.skip())
                else:
                    r = event.result
                    yield (route_badge(r), r.cot, stats_line(r), gold_summary(event, int(k_in)),
                           gallery_items(event.hits), hits_table(event.hits),
                           export_file(event, services.fingerprint), [h.__dict__ for h in event.hits])
        except UserError as exc:
            raise gr.Error(str(exc)) from exc

    outputs = [badge, cot, stats, gold, gallery, table, export, last_hits]
    task.change(examples_for, task, [example, instruction, qid])
    example.change(pick_example, [task, example], [text, image, qid])
    text.input(lambda: "", None, qid)  # an edited query is no longer the benchmark query
    image.input(lambda: "", None, qid)
    go.click(run, [task, instruction, text, image, mode, k, qid], outputs, concurrency_limit=1,
             concurrency_id="model", api_visibility="private")

    def run_compare(task_name, instruction_text, text_in, image_in, k_in, qid_in):
        try:
            return comparison_markdown(compare(services, task_name, text_in, image_in, instruction_text, k_in,
                                               qid_in or None))
        except UserError as exc:
            raise gr.Error(str(exc)) from exc

    cmp.click(run_compare, [task, instruction, text, image, k, qid], comparison, concurrency_limit=1,
              concurrency_id="model", api_visibility="private")

    def search_with_hit(hits: list[dict], evt: gr.SelectData):
        hit = [h for h in hits if h["image"]][evt.index]
        img = Image.open(hit["image"]) if hit["image"] else None
        return hit["text"] or "", img, ""

    gallery.select(search_with_hit, last_hits, [text, image, qid])

    def api_search(query_text: str, query_image: FileData | None, task_name: str, reasoning: str = "auto",
                   top_k: float = 10) -> dict:
        """Search: route, chain of thought and ranked hits for a text and/or image query."""
        try:
            return search_api(services, query_text, query_image, task_name, reasoning, top_k)
        except (UserError, InputError) as exc:
            raise gr.Error(str(exc)) from exc

    def api_compare(query_text: str, query_image: FileData | None, task_name: str, top_k: float = 10) -> str:
        """Compare: the same query with reasoning off and on (gold ranks, top-k overlap), as Markdown."""
        try:
            img = api_image(services, query_image)
            return comparison_markdown(compare(services, task_name, query_text, img, None, top_k))
        except (UserError, InputError) as exc:
            raise gr.Error(str(exc)) from exc

    gr.api(api_search, api_name="search", concurrency_limit=1, concurrency_id="model")
    gr.api(api_compare, api_name="compare", concurrency_limit=1, concurrency_id="model")
