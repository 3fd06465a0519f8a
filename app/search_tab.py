"""Search tab: a query in, the route, the chain of thought as it streams, and the ranked candidates out.

The use cases (search with a routing bias, re-embedding after a chain of thought edited by hand, compare,
examples, search with a result) are `usecases.py`'s and `first_visit.py`'s; this module renders their results
and wires them to components. The scriptable endpoints `search` and `compare` (gradio_client) return what the
UI shows. A mistake in the query is a warning (a toast and a note under the buttons): the last good results
stay on the page.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import gradio as gr
from gradio import FileData
from gradio.utils import get_upload_folder
from PIL import Image

from trace_core.atomic import atomic_file
from trace_core.records import REASONING_MODES, CotDelta, InputError, QueryResult, check_routing_bias

from . import scratch
from .display import (
    HIT_HEADERS,
    QUERY_IMAGE,
    borrowed_words,
    candidate_name,
    cap_warning,
    cap_warning_html,
    cot_edit_markdown,
    example_samples,
    hits_table,
    route_words,
)
from .first_visit import default_task, example_queries
from .links import LinkSlots, benchmark_query, instruction_for, linked_inputs
from .services import Services
from .usecases import (
    Comparison,
    Hit,
    SearchResult,
    UserError,
    another_cot,
    checked,
    compare,
    edit_cot,
    open_api_image,
    query_from_hit,
    search,
    search_with_cot,
    stream_search,
)

GUARD_N = 3  # the repetition guard of the UI's checkbox: no 3-gram twice in one chain of thought
N_EXAMPLES = 4


# ------------------------------------------------------------------------------------------ API
def api_image(services: Services, image) -> Image.Image | None:
    """The image of an API call, opened only from Gradio's upload folder or the data root."""
    return open_api_image(services, image, get_upload_folder())


def search_api(services: Services, query_text, query_image, task_name, reasoning="auto", top_k=10,
               no_repeat_ngram=0, cot: str | None = None, routing_bias=0.0) -> dict:
    """What the `search` endpoint returns (JSON with the model fingerprint). With `cot` (a string, "" for
    none), the query is embedded after that chain of thought instead of one the model writes. `routing_bias`
    (last, so that older positional calls keep working) is added to the `<|emb|>` logit at the first step."""
    img = api_image(services, query_image)
    if cot is not None:  # no first step to bias; a bad value is still refused
        checked(check_routing_bias, 0.0 if routing_bias is None else routing_bias)
        return search_with_cot(services, task_name, query_text, img, None, cot, top_k).to_json(services.fingerprint)
    return search(services, task_name, query_text, img, None, reasoning, top_k, no_repeat_ngram=no_repeat_ngram,
                  routing_bias=routing_bias).to_json(services.fingerprint)


# ------------------------------------------------------------------------------------------ rendering
def _cell(h: Hit | None) -> str:
    if h is None:
        return ""
    name = html.escape(h.caption).replace("|", "\\|")
    return f"{'✓ ' if h.gold else ''}{name} ({h.score:.3f})"


def comparison_markdown(c: Comparison) -> str:
    """Both rankings side by side by name, gold ranks, and what entered and left the top k with reasoning."""
    off, on = c.off, c.on
    names = {h.did: h.caption for h in [*off.hits, *on.hits]}
    lines = ["| | without reasoning | with reasoning |", "|---|---|---|",
             f"| CoT tokens | 0 | {on.result.cot_tokens} |",
             f"| latency | {off.result.latency_s:.2f} s | {on.result.latency_s:.2f} s |"]
    for (d, r1, s1), (_, r2, s2) in zip(off.gold, on.gold, strict=True):
        lines.append(f"| gold `{d}` | rank {r1} ({s1:.3f}) | rank {r2} ({s2:.3f}) |")
    for n in range(c.k):
        a = off.hits[n] if n < len(off.hits) else None
        b = on.hits[n] if n < len(on.hits) else None
        lines.append(f"| #{n + 1} | {_cell(a)} | {_cell(b)} |")

    def named(dids: list[str]) -> str:
        return ", ".join(f"{html.escape(names.get(d, d))} (`{d}`)" for d in dids) or "none"

    cap = cap_warning(on.result)
    lines += ["", f"Top-{c.k} overlap: **{c.overlap}/{c.k}**. Entered with reasoning: {named(c.entered)}. "
              f"Left: {named(c.left)}.", "",
              f"**CoT:** {html.escape(on.result.cot) or '(none)'}"]
    if cap:
        lines += ["", f"⚠ {html.escape(cap)}"]
    return "\n".join(lines)


def route_badge(result: QueryResult | None, cap: int | None = None) -> str:
    if result is None:
        return "<div class='route-badge pending'>thinking…</div>"
    cls = "direct" if result.route == "direct" else "reason"
    words = html.escape(route_words(result))
    return f"<div class='route-badge {cls}'>{words}</div>{cap_warning_html(result, cap)}"


def cot_text(result: QueryResult) -> str:
    if result.route == "direct":
        return "(no chain of thought: the query was embedded at once)"
    return result.cot or "(the chain of thought is only whitespace or special tokens)"


def stats_line(result: QueryResult) -> str:
    trunc = " (**cut off at the cap**: `<|emb|>` forced)" if result.truncated else ""
    guard = f" · repetition guard on ({result.no_repeat_ngram}-grams)" if result.no_repeat_ngram else ""
    return f"{result.cot_tokens} CoT tokens{trunc} · {result.latency_s:.2f} s{guard}"


def gallery_items(hits: list[Hit]) -> list[tuple[str, str]]:
    return [(h.image, f"#{h.rank} · {h.score:.3f}{' · ✓ gold' if h.gold else ''} · {h.caption}")
            for h in hits if h.image]


def gallery_update(hits: list[Hit], label: str = "Results (click one to search with it)"):
    """The gallery of the image hits; hidden when there are none (a text task)."""
    items = gallery_items(hits)
    return gr.Gallery(value=items or None, visible=bool(items), label=label)


HEADERS = HIT_HEADERS


def gold_summary(res: SearchResult, k: int, task_names: dict[str, str] | None = None) -> str:
    if not res.gold:
        return ("Free query: no gold candidates to mark. Pick an example or a benchmark query to see where its gold "
                "lands.")
    d, r, s = res.gold[0]
    where = "in the top-k" if r <= k else f"outside the top-{k}"
    name = (task_names or {}).get(d)
    what = f"*{html.escape(name)}* (`{d}`)" if name else f"`{d}`"
    return f"Gold {what} is at rank **{r}** ({where}), score {s:.3f}; top-1 score {res.hits[0].score:.3f}."


def export_file(res: SearchResult, fingerprint: dict) -> str:
    """The search as JSON (query, route, CoT, hits, the model's fingerprint) in a fresh scratch folder, written
    atomically; its path."""
    path = scratch.fresh("search") / "trace-search.json"
    text = json.dumps(res.to_json(fingerprint), indent=2)
    atomic_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return str(path)


def warning_note(message: str) -> str:
    return (f"<div class='query-warning'>⚠ {html.escape(message)} The results below are from the last search that "
            "worked.</div>")


# ------------------------------------------------------------------------------------------ UI
def build_search_tab(services: Services) -> LinkSlots:
    """The tab's components and events (inside `with gr.Tab("Search"):`); what a deep link fills."""
    tasks = services.tasks
    choices = [(t.label, name) for name, t in tasks.items()]
    first = default_task(services)
    cap = getattr(services.encoder, "max_cot_tokens", None)
    examples_of = {name: example_queries(services, name, N_EXAMPLES) for name in tasks}
    qids_of = {name: {q.qid for q in t.queries} for name, t in tasks.items()}

    def placeholder(task_name: str) -> str:
        ex = next((e for e in examples_of[task_name] if e.text), None)
        return f"e.g. {ex.text}" if ex else ""

    def bench_choices(task_name: str) -> list[tuple[str, str]]:
        t = tasks[task_name]
        return [(f"{q.qid} [{t.labels.get(q.qid) or '?'}] {q.text or '(image only)'}"[:90], q.qid)
                for q in t.queries[:200]]

    gr.set_static_paths([str(services.root.resolve())])  # the examples' thumbnails
    t0 = tasks[first]
    modes_info = "auto: the model decides · always: it must think first · never: it embeds at once"
    guard_info = ("Stops a chain of thought that loops until the token cap. It can also block a repeat the answer "
                  "needs (an edit names its skin tone twice): on TRACE-mini v2's edits it costs recall. The "
                  "benchmark and the analysis tabs use plain greedy decoding (guard off), as in the paper.")
    bias_info = ("Added to the <|emb|> logit at the first step: positive favours embedding at once, negative "
                 "favours reasoning. Only matters in mode auto; the examples run with 0, as evaluated.")
    edit_info = ("The query of the search is embedded after this text instead of the model's own thought "
                 "(teacher forcing); an empty one embeds at once, as the direct route does.")
    with gr.Column(elem_id="search-panel"), gr.Row():
        with gr.Column(scale=2, min_width=380):
            task = gr.Dropdown(choices, value=first, label="Task")
            examples = gr.Dataset(components=["html", "textbox"], headers=["example query", "how the model did"],
                                  samples=example_samples(examples_of[first], services.image_path), type="index",
                                  label="Examples from the benchmark: click one to run it (as evaluated: reasoning auto)",
                                  samples_per_page=N_EXAMPLES, elem_classes="example-queries")
            text = gr.Textbox(label="Query text", placeholder=placeholder(first), lines=2, max_lines=6,
                              visible=t0.takes_text)
            image = gr.Image(type="pil", label="Query image", height=180, visible=t0.takes_image,
                             elem_id="search-query-image", **QUERY_IMAGE)
            instruction = gr.Textbox(t0.instructions[0], label="Instruction (editable)", lines=2)
            with gr.Row():
                mode = gr.Radio(list(REASONING_MODES), value="auto", label="Reasoning", info=modes_info)
                k = gr.Slider(1, 50, value=10, step=1, label="top-k")
            guard = gr.Checkbox(False, label=f"Repetition guard (block repeated {GUARD_N}-grams)", info=guard_info)
            bias = gr.Slider(-10, 10, value=0, step=0.5, label="Routing bias", info=bias_info)
            qid = gr.State("")
            with gr.Row():
                go = gr.Button("Search", variant="primary")
                cmp = gr.Button("Compare: reasoning off vs on")
            notice = gr.HTML("")
            bench = gr.Dropdown(bench_choices(first), value=None, allow_custom_value=False,
                                label="Any benchmark query of this task (gold marked)")
        with gr.Column(scale=3):
            badge = gr.HTML("<div class='route-badge pending'>no query yet</div>")
            cot = gr.Textbox(label="Chain of thought (streams as it is generated)", lines=4, interactive=False)
            stats = gr.Markdown()
            gold = gr.Markdown()
            gallery = gr.Gallery(label="Results (click one to search with it)", columns=5, height="auto",
                                 allow_preview=False, visible=False, elem_classes="hits-gallery")
            table = gr.Dataframe(headers=HEADERS, label="Ranked candidates (click a row to search with it)",
                                 interactive=False, wrap=True, column_widths=["8%", "11%", "8%", "55%", "18%"],
                                 elem_classes="fit-table")
            with gr.Accordion("Edit the chain of thought and re-embed", visible=False,
                              elem_id="cot-edit") as edit_box:
                cot_edit = gr.Textbox(label="Edit the chain of thought and re-embed", lines=3, max_lines=10,
                                      interactive=True, info=edit_info)
                with gr.Row():
                    reembed = gr.Button("Re-embed with this CoT", size="sm")
                    blank = gr.Button("Blank CoT", size="sm")
                    borrow = gr.Button("Another query's CoT", size="sm")
                edit_note = gr.HTML("")
                edit_md = gr.Markdown()
                edit_table = gr.Dataframe(headers=HEADERS, label="Ranked candidates after the edited CoT",
                                          interactive=False, wrap=True, visible=False,
                                          column_widths=["8%", "11%", "8%", "55%", "18%"], elem_classes="fit-table")
            comparison = gr.Markdown(elem_classes="fit-markdown")
            off_gallery = gr.Gallery(label="Without reasoning", columns=5, height="auto", allow_preview=False,
                                     visible=False, elem_classes="hits-gallery")
            export = gr.File(label="Export (JSON with the model fingerprint)")
    last_hits = gr.State([])
    searched = gr.State(None)  # the last search's SearchResult: the query and ranking an edited CoT is put against
    edit_outputs = [searched, edit_box, cot_edit, edit_md, edit_table, edit_note]
    outputs = [badge, cot, stats, gold, gallery, table, comparison, off_gallery, export, last_hits, *edit_outputs,
               notice]
    skip_all = tuple(gr.skip() for _ in outputs)
    names = {name: {c.did: t.name_of(c.did, 200) for c in t.pool} for name, t in tasks.items()}

    def failed(exc: Exception) -> tuple:
        gr.Warning(str(exc))
        return (*skip_all[:-1], warning_note(str(exc)))

    def offer_edit(res: SearchResult | None) -> tuple:
        """The edit section for a new search: its query's own CoT offered for editing, the last edit gone (its
        table hidden until there is an edit to show)."""
        no_table = gr.Dataframe(value=[], visible=False)
        if res is None:
            return None, gr.Accordion(visible=False), "", "", no_table, ""
        return res, gr.Accordion(visible=True), res.result.cot, "", no_table, ""

    def stream(task_name, instruction_text, text_in, image_in, mode_in, k_in, qid_in, guard_in, bias_in=0.0):
        """The outputs as the model reasons, then the result; a mistake keeps the last results."""
        so_far, cleared = "", False
        try:
            for event in stream_search(services, task_name, text_in, image_in, instruction_text, mode_in, k_in,
                                       qid_in or None, GUARD_N if guard_in else 0, bias_in):
                if isinstance(event, CotDelta):
                    so_far += event.text
                    head = (route_badge(None), so_far, f"{event.n_tokens} tokens…")
                    if cleared:
                        yield (*head, *skip_all[3:])
                    else:  # a new query: nothing of the previous one stays on the page
                        cleared = True
                        yield (*head, "", gr.Gallery(value=None, visible=False), [], "",
                               gr.Gallery(value=None, visible=False), None, [], *offer_edit(None), "")
                else:
                    r = event.result
                    yield (route_badge(r, cap), cot_text(r), stats_line(r), gold_summary(event, len(event.hits),
                                                                                   names[task_name]),
                           gallery_update(event.hits), hits_table(event.hits), "",
                           gr.Gallery(value=None, visible=False), export_file(event, services.fingerprint),
                           [h.__dict__ for h in event.hits], *offer_edit(event), "")
        except (UserError, InputError) as exc:
            yield failed(exc)

    search_inputs = [task, instruction, text, image, mode, k, qid, guard, bias]
    go.click(stream, search_inputs, outputs, **services.search_concurrency, api_visibility="private")

    def run_compare(task_name, instruction_text, text_in, image_in, k_in, qid_in):
        try:
            c = compare(services, task_name, text_in, image_in, instruction_text, k_in, qid_in or None)
        except (UserError, InputError) as exc:
            return failed(exc)
        r = c.on.result
        return (route_badge(r, cap), cot_text(r), stats_line(r) + " · **Compare**: the chain of thought, gallery and "
                "table show the run *with* reasoning; the table at the bottom puts both rankings side by side.",
                gold_summary(c.on, c.k, names[task_name]), gallery_update(c.on.hits, "With reasoning"),
                hits_table(c.on.hits), comparison_markdown(c), gallery_update(c.off.hits, "Without reasoning"),
                export_file(c.on, services.fingerprint), [h.__dict__ for h in c.on.hits], *offer_edit(c.on), "")

    # Its two searches go through the micro-batcher like any search, so it waits in the searches' queue, not
    # behind every other model call (with 16 clients it had a median wait of 9 s there).
    cmp.click(run_compare, [task, instruction, text, image, k, qid], outputs, **services.search_concurrency,
              api_visibility="private")

    # ---- changing the task: its examples, instruction and benchmark queries; inputs it does not take go away
    def change_task(task_name: str, qid_in: str):
        """Whatever set the task (a click, a result searched with, a link): its examples, benchmark queries and
        instruction; the inputs it does not take cleared and hidden. The benchmark query stays when it is one of
        the new task's (a link sets both at once), else it is dropped. The query text is never read: the value
        a component sends can be older than the event that set the task (a State's, read here, cannot)."""
        t = tasks[task_name]
        keep = qid_in if qid_in in qids_of[task_name] else ""
        return (gr.Dataset(samples=example_samples(examples_of[task_name], services.image_path)),
                gr.Dropdown(choices=bench_choices(task_name), value=None),
                instruction_for(examples_of[task_name], t.instructions[0], keep), keep,
                gr.Textbox(visible=True, placeholder=placeholder(task_name)) if t.takes_text
                else gr.Textbox(value="", visible=False),
                gr.Image(visible=True) if t.takes_image else gr.Image(value=None, visible=False))

    task.change(change_task, [task, qid], [examples, bench, instruction, qid, text, image], api_visibility="private")

    def fill_example(task_name, index):
        """An example's query in the inputs, set up as the evaluation ran it (reasoning auto, plain greedy
        decoding, no routing bias, its instruction), so that its search finds the gold where the label says."""
        exs = examples_of[task_name]
        if index is None or not 0 <= int(index) < len(exs):
            return (gr.skip(),) * 7 + (False,)
        e = exs[int(index)]
        text_v, img = benchmark_query(services, task_name, e.qid)
        return text_v, img, e.qid, e.instruction or tasks[task_name].instructions[0], "auto", False, 0, True

    go_on = gr.State(False)  # whether the event before a chained search set up a query to run

    def stream_if(go_on_in, *args):
        if go_on_in:
            yield from stream(*args)
        else:
            yield skip_all

    examples.click(fill_example, [task, examples], [text, image, qid, instruction, mode, guard, bias, go_on],
                   api_visibility="private").then(
        stream_if, [go_on, *search_inputs], outputs, **services.search_concurrency,
        api_visibility="private")

    def pick_bench(task_name: str, chosen: str | None):
        if not chosen:
            return gr.skip(), gr.skip(), gr.skip()
        text_v, img = benchmark_query(services, task_name, chosen)
        return text_v, img, chosen

    bench.input(pick_bench, [task, bench], [text, image, qid], api_visibility="private")
    text.input(lambda: "", None, qid, api_visibility="private")  # an edited query is no longer the benchmark query
    image.input(lambda: "", None, qid, api_visibility="private")

    # ---- search with a result: the result becomes the query, on a task that takes it
    hit_note = gr.State("")  # what the click did, said under the buttons while its search runs

    def use_hit(task_name, instruction_text, text_in, hit: dict):
        """The result in the inputs, on a task that takes it (the search follows as a chained event)."""
        try:
            hq = query_from_hit(services, task_name, hit.get("text"), hit.get("image"), text_in)
        except UserError as exc:
            gr.Warning(str(exc))
            return (*(gr.skip() for _ in range(5)), False, warning_note(str(exc)))
        t = tasks[hq.task]
        img = Image.open(hq.image) if hq.image else None
        instr = instruction_text if hq.task == task_name else t.instructions[0]
        what = candidate_name(hit.get("text"), hit.get("image"), 80, hit.get("shows"))
        moved = f" on {t.label}, a task that takes it" if hq.task != task_name else ""
        note = (f"<div class='query-info'>Searching with result #{hit.get('rank')} ({html.escape(what)}) as the "
                f"query{html.escape(moved)}.</div>")
        return (hq.task, gr.Textbox(value=hq.text, visible=t.takes_text), gr.Image(value=img, visible=t.takes_image),
                "", instr, True, note)

    def from_gallery(task_name, instruction_text, text_in, hits, evt: gr.SelectData):
        shown = [h for h in hits if h.get("image")]
        if not isinstance(evt.index, int) or not 0 <= evt.index < len(shown):
            return (*(gr.skip() for _ in range(5)), False, "")
        return use_hit(task_name, instruction_text, text_in, shown[evt.index])

    def from_table(task_name, instruction_text, text_in, hits, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(row, int) or not 0 <= row < len(hits):
            return (*(gr.skip() for _ in range(5)), False, "")
        return use_hit(task_name, instruction_text, text_in, hits[row])

    def stream_noted(go_on_in, note, *args):
        """The chained search, with what the click did said under the buttons (a warning when it failed)."""
        if not go_on_in:
            yield (*skip_all[:-1], note or gr.skip())
            return
        for out in stream(*args):
            yield (*out[:-1], out[-1] or note)

    hit_inputs = [task, instruction, text, last_hits]
    hit_outputs = [task, text, image, qid, instruction, go_on, hit_note]
    for component, pick_fn in ((gallery, from_gallery), (table, from_table)):
        component.select(pick_fn, hit_inputs, hit_outputs, api_visibility="private").then(
            stream_noted, [go_on, hit_note, *search_inputs], outputs, **services.search_concurrency,
            api_visibility="private")

    # ---- the chain of thought by hand: the search's query re-embedded after an edited, blank or borrowed CoT
    def run_edit(before, cot_in):
        """The ranking after the edited CoT and how the gold moved; a mistake keeps the last one."""
        try:
            e = edit_cot(services, before, cot_in or "")
        except (UserError, InputError) as exc:
            gr.Warning(str(exc))
            return gr.skip(), gr.skip(), warning_note(str(exc))
        return cot_edit_markdown(e), gr.Dataframe(value=hits_table(e.after.hits), visible=True), ""

    def borrow_cot(before):
        """Another benchmark query's CoT (of the same task, from the evaluation) in the box, to re-embed with."""
        try:
            if before is None:
                raise UserError("Search first: the chain of thought is edited for the query of the last search.")
            b = another_cot(services, before.task, before.query.qid if before.query else None)
        except UserError as exc:
            gr.Warning(str(exc))
            return gr.skip(), warning_note(str(exc)), False
        note = f"<div class='query-info'>{html.escape(borrowed_words(b.qid, b.query))}</div>"
        return b.cot, note, True

    def run_edit_if(go_edit_in, note, before, cot_in):
        """The chained re-embedding, with what the borrow click did said under the buttons."""
        if not go_edit_in:
            return gr.skip(), gr.skip(), note or gr.skip()
        md, rows, warn = run_edit(before, cot_in)
        return md, rows, warn or note

    edit_results = [edit_md, edit_table, edit_note]
    reembed.click(run_edit, [searched, cot_edit], edit_results, concurrency_limit=1, concurrency_id="model",
                  api_visibility="private")
    blank.click(lambda: "", None, cot_edit, api_visibility="private").then(
        run_edit, [searched, cot_edit], edit_results, concurrency_limit=1, concurrency_id="model",
        api_visibility="private")
    borrowed = gr.State("")  # what the borrow click said, kept under the buttons after its re-embedding
    go_edit = gr.State(False)  # whether the borrow click put a CoT in the box to re-embed with
    borrow.click(borrow_cot, [searched], [cot_edit, borrowed, go_edit], api_visibility="private").then(
        run_edit_if, [go_edit, borrowed, searched, cot_edit], edit_results, concurrency_limit=1,
        concurrency_id="model", api_visibility="private")

    # ---- a deep link (ui.py reads it on load): its query in the inputs, as a click on a benchmark query or a
    # typed query sets them, then searched at once when it is whole (a task that needs an image waits for one)
    restore = gr.State(None)

    def apply_link(restored):
        if restored is None:
            return (*(gr.skip() for _ in range(7)), False)
        f = linked_inputs(services, examples_of, restored)
        t = tasks[f.task]
        return (f.task, gr.Textbox(value=f.text, visible=t.takes_text, placeholder=placeholder(f.task)),
                gr.Image(value=f.image, visible=t.takes_image), f.qid, f.instruction, f.mode, f.bias, f.run)

    restore.change(apply_link, restore, [task, text, image, qid, instruction, mode, bias, go_on],
                   api_visibility="private").then(
        stream_if, [go_on, *search_inputs], outputs, **services.search_concurrency,
        api_visibility="private")

    # ---- the API
    def api_search(query_text: str, query_image: FileData | None, task_name: str, reasoning: str = "auto",
                   top_k: float = 10, no_repeat_ngram: float = 0, cot: str | None = None,
                   routing_bias: float = 0.0) -> dict:
        """Search: route, chain of thought and ranked hits for a text and/or image query. no_repeat_ngram: the
        repetition guard (0, the default: plain greedy decoding, as in the benchmark; 1-8: no n-gram twice).
        cot: a chain of thought to embed the query after, instead of the model's own ("" embeds at once;
        reasoning, no_repeat_ngram and routing_bias are then unused). routing_bias: added to the <|emb|> logit
        at the first step (> 0 favours embedding at once, < 0 reasoning; only matters for reasoning "auto");
        the JSON gives P(<|emb|>) before (p_emb) and after it (p_emb_with_bias)."""
        try:
            return search_api(services, query_text, query_image, task_name, reasoning, top_k, no_repeat_ngram,
                              cot, routing_bias)
        except (UserError, InputError) as exc:
            raise gr.Error(str(exc)) from exc

    def api_compare(query_text: str, query_image: FileData | None, task_name: str, top_k: float = 10) -> str:
        """Compare: the same query with reasoning off and on (gold ranks, top-k overlap), as Markdown."""
        try:
            img = api_image(services, query_image)
            return comparison_markdown(compare(services, task_name, query_text, img, None, top_k))
        except (UserError, InputError) as exc:
            raise gr.Error(str(exc)) from exc

    gr.api(api_search, api_name="search", **services.search_concurrency)
    gr.api(api_compare, api_name="compare", **services.search_concurrency)
    return LinkSlots(fields=(task, text, qid, mode, bias), restore=restore)
