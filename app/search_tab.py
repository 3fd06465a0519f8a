"""Search tab: a query in, the route, the chain of thought as it streams, and the ranked candidates out.

The handlers are plain functions of the services (called directly by the tests); `build_search_tab` wires
them to components. The scriptable endpoint `search` (gradio_client) returns the same as the UI, as JSON.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr
from gradio import FileData
from gradio.utils import get_upload_folder
from PIL import Image

from trace_core.records import (
    REASONING_MODES,
    CotDelta,
    InputError,
    Query,
    QueryResult,
    check_k,
    check_reasoning,
    load_image,
)

from .services import Services, Task, gpu


class UserError(ValueError):
    """A mistake in the query: shown to the person as it is (gr.Error in the UI)."""


def checked(check, value):
    """`value` through one of `trace_core.records`' checks (`check_k`, `check_reasoning`, ...): the one rule and
    message of each; a refusal becomes a UserError."""
    try:
        return check(value)
    except InputError as exc:
        raise UserError(str(exc)) from None


def top_k(k, task: Task) -> int:
    """The top-k of a search: a whole number >= 1 (`check_k`), at most the task's pool size."""
    return min(checked(check_k, k), len(task.pool))


@dataclass
class Hit:
    rank: int
    did: str
    score: float
    text: str | None
    image: str | None  # absolute path of the candidate's image
    gold: bool


@dataclass
class SearchResult:
    result: QueryResult
    hits: list[Hit]
    gold: list[tuple[str, int, float]]  # (did, exact rank, score) of every gold candidate, if known
    task: str

    def to_json(self, fingerprint: dict) -> dict:
        r = self.result
        return {
            "model": fingerprint,
            "task": self.task,
            "route": r.route,
            "p_emb": r.p_emb,
            "cot": r.cot,
            "cot_tokens": r.cot_tokens,
            "truncated": r.truncated,
            "latency_s": r.latency_s,
            "reasoning": r.reasoning,
            "hits": [{"rank": h.rank, "did": h.did, "score": h.score, "text": h.text, "gold": h.gold}
                     for h in self.hits],
            "gold": [{"did": d, "rank": k, "score": s} for d, k, s in self.gold],
        }


def make_query(services: Services, task_name: str, text: str | None, image, instruction: str | None,
               qid: str | None = None) -> tuple[Task, Query]:
    """Check the inputs against the task and build the encoder's query; clear messages for mistakes."""
    if not isinstance(task_name, str) or task_name not in services.tasks:
        raise UserError(f"unknown task {task_name!r}")
    task = services.tasks[task_name]
    if text is not None and not isinstance(text, str):
        raise UserError("The query text must be a string.")
    text = (text or "").strip()
    if not text and image is None:
        raise UserError("The query is empty: type a text, upload an image, or both.")
    if image is not None and not task.takes_image:
        raise UserError(f"{task.label} takes a text query; remove the image or pick a task with image queries.")
    if image is None and task.takes_image and not task.takes_text:
        raise UserError(f"{task.label} takes an image query; upload an image.")
    if image is None and task.query_modality == "image,text":
        raise UserError(f"{task.label} takes an image and a text; upload the reference image.")
    if len(text) > 2000:
        raise UserError("The query text is too long (over 2,000 characters).")
    try:
        img = load_image(image) if image is not None else None
    except InputError as exc:
        raise UserError(f"The image cannot be used: {exc}") from exc
    instruction = (instruction or "").strip() or task.instructions[0]
    return task, Query(text=text or None, image=img, instruction=instruction, qid=qid or "")


def rank(services: Services, task: Task, result: QueryResult, k: int, qid: str | None) -> SearchResult:
    scores, ids = task.index.search(result.embedding, k)
    gold_ids = task.positives.get(qid or "", set())
    hits = []
    for n, (did, score) in enumerate(zip(ids[0], scores[0], strict=True), start=1):
        c = task.candidate(did)
        hits.append(Hit(n, did, float(score), c.text, services.image_path(c.image_path), did in gold_ids))
    [gold] = task.index.positive_ranks(result.embedding[None], [gold_ids])  # every gold's exact rank, best first
    return SearchResult(result, hits, gold, task.name)


@gpu
def stream_search(services: Services, task_name: str, text, image, instruction, mode: str, k: int,
                  qid: str | None = None) -> Iterator[CotDelta | SearchResult]:
    """Yield CoT deltas while the model reasons, then the ranked result."""
    mode = checked(check_reasoning, mode)
    task, query = make_query(services, task_name, text, image, instruction, qid)
    k = top_k(k, task)
    with services.model_lock:
        for event in services.encoder.stream_query(query, reasoning=mode):
            if isinstance(event, CotDelta):
                yield event
            else:
                yield rank(services, task, event, k, qid)


def search(services: Services, task_name: str, text, image, instruction, mode: str, k: int,
           qid: str | None = None) -> SearchResult:
    *_, last = stream_search(services, task_name, text, image, instruction, mode, k, qid)
    return last


def compare(services: Services, task_name: str, text, image, instruction, k: int,
            qid: str | None = None) -> str:
    """The same query with reasoning forced off and on: scores, gold ranks, what entered and left the top k."""
    off = search(services, task_name, text, image, instruction, "never", k, qid)
    on = search(services, task_name, text, image, instruction, "always", k, qid)
    k = len(off.hits)
    a, b = [h.did for h in off.hits], [h.did for h in on.hits]
    lines = ["| | without reasoning | with reasoning |", "|---|---|---|",
             f"| CoT tokens | 0 | {on.result.cot_tokens} |",
             f"| latency | {off.result.latency_s:.2f} s | {on.result.latency_s:.2f} s |",
             f"| top-1 | `{a[0]}` ({off.hits[0].score:.3f}) | `{b[0]}` ({on.hits[0].score:.3f}) |"]
    for (d, r1, s1), (_, r2, s2) in zip(off.gold, on.gold, strict=True):
        lines.append(f"| gold `{d}` | rank {r1} ({s1:.3f}) | rank {r2} ({s2:.3f}) |")
    overlap = len(set(a) & set(b))
    entered = [d for d in b if d not in a]
    left = [d for d in a if d not in b]
    lines += ["", f"Top-{k} overlap: **{overlap}/{k}**. Entered with reasoning: {', '.join(entered) or 'none'}. "
              f"Left: {', '.join(left) or 'none'}.", "", f"**CoT:** {html.escape(on.result.cot) or '(none)'}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ API
def api_image(services: Services, image) -> Image.Image | None:
    """The image of an API call: FileData (gradio_client's handle_file), its dict, or a path string.

    Only files under Gradio's upload folder (where uploads land) or under the data root are opened: a client
    cannot make the server read any other file.
    """
    if image is None or image == "":
        return None
    if isinstance(image, dict):
        image = image.get("path")
    elif not isinstance(image, str):
        image = getattr(image, "path", None)
    if not isinstance(image, str) or not image:
        raise UserError("The image must be an uploaded file (gradio_client.handle_file).")
    path = os.path.realpath(image)
    allowed = [os.path.realpath(get_upload_folder()), os.path.realpath(services.root)]
    if not any(os.path.commonpath([path, a]) == a for a in allowed):
        raise UserError("The image must be an uploaded file (gradio_client.handle_file), not a server path.")
    return load_image(path)


def search_api(services: Services, query_text, query_image, task_name, reasoning="auto", top_k=10) -> dict:
    """What the `search` endpoint returns (JSON with the model fingerprint)."""
    img = api_image(services, query_image)
    return search(services, task_name, query_text, img, None, reasoning, top_k).to_json(services.fingerprint)


# ------------------------------------------------------------------------------------------ rendering
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
            return compare(services, task_name, text_in, image_in, instruction_text, int(k_in), qid_in or None)
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
            return compare(services, task_name, query_text, img, None, top_k)
        except (UserError, InputError) as exc:
            raise gr.Error(str(exc)) from exc

    gr.api(api_search, api_name="search", concurrency_limit=1, concurrency_id="model")
    gr.api(api_compare, api_name="compare", concurrency_limit=1, concurrency_id="model")
