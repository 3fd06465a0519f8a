"""Walkthrough tab: one query taken step by step, in plain words a teacher could read to a class, then the
chain of thought as an experiment: edit it, blank it or take another query's, re-embed, and see the gold move.

The steps are rendered by `walkthrough_view.py` (no Gradio); the counterfactual is `usecases.edit_cot` and
`usecases.another_cot`, the same as the Search tab's. This module builds the components and wires the events.
"""

from __future__ import annotations

import html
from collections.abc import Iterator

import gradio as gr
from PIL import Image

from trace_core.explain import PromptStep
from trace_core.lazy import is_trace_encoder
from trace_core.records import REASONING_MODES, CotDelta, InputError

from . import downloads
from .display import (
    BEFORE_AFTER_HEADERS,
    QUERY_IMAGE,
    before_after_rows,
    borrowed_words,
    cot_edit_markdown,
    example_samples,
)
from .first_visit import default_task, example_queries
from .links import LinkSlots, instruction_for, linked_inputs
from .services import Services
from .usecases import SearchResult, UserError, another_cot, edit_cot
from .walkthrough_view import (
    STRIP_CSS,
    decision_figure,
    decision_frame,
    decision_markdown,
    prompt_markdown,
    quoted,
    stream_walkthrough,
    token_strip,
)

N_EXAMPLES = 6
FIGURE = "walkthrough first step next-token probabilities"  # the figure's download name
FIGURE_ID = "wt-decision-plot"

INTRO = (
    "Follow one query through the model, step by step. Pick an example (or type your own), choose how the model "
    "may reason, and press **Walk through**. Each step says in plain words what happens inside the model."
)
EDIT_INFO = ("The query is embedded after this text instead of the model's own thought (teacher forcing); an "
             "empty one embeds at once, as the direct route does. The pool and the top-k stay the same.")

N_VIEW = 11  # the five steps' outputs (`WalkthroughView.outputs`)
N_OUTPUTS = N_VIEW + 7  # then the figure's CSV and the edit section (`offer_edit`)


def offer_edit(before: SearchResult | None) -> list:
    """The edit section for a new walkthrough: hidden while it runs; then open, with the model's own chain of
    thought in the box, the last edit gone. Outputs: state, section, box, summary, table, note."""
    if before is None:
        return [None, gr.Accordion(visible=False), "", "", gr.Dataframe(value=[], visible=False), ""]
    return [before, gr.Accordion(visible=True), before.result.cot, "", gr.Dataframe(value=[], visible=False), ""]


def run_walkthrough(services: Services, task_name, instruction, text, image, mode, bias, k, qid
                    ) -> Iterator[list]:
    """The UI handler: output values as they become known; bad input becomes a warning, and every output keeps
    what it shows."""
    skip = gr.skip()
    so_far = ""
    first: PromptStep | None = None
    try:
        for event in stream_walkthrough(services, task_name, text, image, instruction, mode, bias, k, qid or None):
            if isinstance(event, PromptStep):
                first = event
                waiting = ("### Step 3 · The chain of thought\n*The model is writing…*" if event.route == "reason"
                           else "### Step 3 · The chain of thought\n*No chain of thought: embedding at once…*")
                frame = decision_frame(event)
                yield [prompt_markdown(event), token_strip(event.tokens, event.emb_token), decision_markdown(event),
                       decision_figure(event, frame), waiting, "", "", "", "", [],
                       gr.Gallery(value=None, visible=False), downloads.csv_update(frame, FIGURE), *offer_edit(None)]
            elif isinstance(event, CotDelta):
                so_far += event.text
                emb = first.emb_token if first else "<|emb|>"
                md = (f"### Step 3 · The chain of thought\nThe model writes one token at a time until it writes "
                      f"`{emb}`…\n\n{quoted(so_far)}\n\n{event.n_tokens} tokens so far…")
                yield [skip] * 4 + [md] + [skip] * (N_OUTPUTS - 5)
            else:
                outs = event.outputs()  # the gallery only when there are candidate images (not on text tasks)
                yield [*outs[:-1], gr.Gallery(value=outs[-1] or None, visible=bool(outs[-1])), skip,
                       *offer_edit(event.search)]
    except UserError as exc:  # a warning; what the tab shows stays
        gr.Warning(str(exc))
        yield [skip] * N_OUTPUTS


def edit_note(message: str) -> str:
    return (f"<div class='query-warning'>⚠ {html.escape(message)} The ranking below is from the last re-embedding "
            "that worked.</div>")


def run_edit(services: Services, before: SearchResult | None, cot: str | None) -> list:
    """Re-embed the walked query after `cot` ("" embeds at once): the gold's rank before and after, and both
    rankings side by side. A mistake is a warning; the last edit's results stay. Outputs: summary, table, note."""
    try:
        e = edit_cot(services, before, cot or "")
    except (UserError, InputError) as exc:
        gr.Warning(str(exc))
        return [gr.skip(), gr.skip(), edit_note(str(exc))]
    return [cot_edit_markdown(e, "walkthrough"),
            gr.Dataframe(value=before_after_rows(e), visible=True), ""]


def borrow_cot(services: Services, before: SearchResult | None) -> list:
    """Another benchmark query's chain of thought (same task, from the evaluation) in the box. Outputs: box,
    note, whether to re-embed."""
    try:
        if before is None:
            raise UserError("Walk through a query first: the chain of thought is edited for that query.")
        b = another_cot(services, before.task, before.query.qid if before.query else None)
    except UserError as exc:
        gr.Warning(str(exc))
        return [gr.skip(), edit_note(str(exc)), False]
    return [b.cot, f"<div class='query-info'>{html.escape(borrowed_words(b.qid, b.query))}</div>", True]


# ------------------------------------------------------------------------------------------ UI
def build_walkthrough_tab(services: Services) -> LinkSlots | None:
    """The tab's components and events (called inside `with gr.Tab("Walkthrough"):`); what a link fills."""
    tasks = services.tasks
    if not is_trace_encoder(services.encoder) or not tasks:
        gr.Markdown("The walkthrough needs a TRACE model (one that routes and reasons) and at least one task.")
        return None
    choices = [(t.label, name) for name, t in tasks.items()]
    first_task = default_task(services)
    examples_of = {name: example_queries(services, name, N_EXAMPLES) for name in tasks}
    qids_of = {name: {q.qid for q in t.queries} for name, t in tasks.items()}
    gr.set_static_paths([str(services.root.resolve())])  # the examples' thumbnails
    gr.Markdown(INTRO)
    with gr.Row(elem_id="walkthrough-panel"):
        with gr.Column(scale=2):
            task = gr.Dropdown(choices, value=first_task, label="Task")
            instruction = gr.Textbox(tasks[first_task].instructions[0], label="Instruction (editable)", lines=2)
            text = gr.Textbox(label="Query text", lines=2, visible=tasks[first_task].takes_text)
            image = gr.Image(type="pil", label="Query image", height=160, visible=tasks[first_task].takes_image,
                             **QUERY_IMAGE)
            mode = gr.Radio(list(REASONING_MODES), value="auto", label="Reasoning",
                            info="auto: the model decides · always: it must think first · never: it embeds at once")
            bias = gr.Slider(-10, 10, value=0.0, step=0.25, label="Routing bias",
                             info=f"added to the {services.encoder.style.emb_token} logit: > 0 favours embedding "
                                  "at once, < 0 favours thinking first")
            k = gr.Slider(1, 20, value=5, step=1, label="top-k candidates")
            qid = gr.State("")
            go_btn = gr.Button("Walk through", variant="primary")
            examples = gr.Dataset(components=["html", "textbox"], headers=["example query", "how the model did"],
                                  label="Examples from the benchmark: click one to walk through it (as evaluated: reasoning auto)",
                                  samples=example_samples(examples_of[first_task], services.image_path), type="index",
                                  samples_per_page=N_EXAMPLES, elem_classes="example-queries")
        with gr.Column(scale=3):
            prompt_md = gr.Markdown("### Step 1 · What the model reads\n*No query yet.*")
            tokens_html = gr.HTML(css_template=STRIP_CSS)
            decision_md = gr.Markdown("### Step 2 · The first decision")
            figure, figure_csv = downloads.figure(None, None, FIGURE, FIGURE_ID,
                                                  label="Next-token probabilities at the first step")
            cot_md = gr.Markdown("### Step 3 · The chain of thought")
            cot_html = gr.HTML(css_template=STRIP_CSS)
            pooling_md = gr.Markdown("### Step 4 · Which hidden state becomes the embedding?")
            pooling_html = gr.HTML(css_template=STRIP_CSS)
            ranking_md = gr.Markdown("### Step 5 · Finding the closest candidates")
            table = gr.Dataframe(headers=["rank", "cosine", "gold", "candidate", "id"], label="Top candidates",
                                 interactive=False, wrap=True, column_widths=["8%", "11%", "8%", "55%", "18%"],
                                 elem_classes="fit-table")
            gallery = gr.Gallery(label="Candidate images", columns=5, height="auto", allow_preview=True,
                                 elem_classes="hits-gallery", visible=False)
            with gr.Accordion("Try it: edit the chain of thought and re-embed", visible=False,
                              elem_id="wt-cot-edit") as edit_box:
                cot_edit = gr.Textbox(label="The thought the query is embedded after", lines=3, max_lines=10,
                                      interactive=True, info=EDIT_INFO)
                with gr.Row():
                    reembed = gr.Button("Re-embed with this thought", size="sm", variant="primary")
                    blank = gr.Button("Blank it", size="sm")
                    borrow = gr.Button("Take another query's thought", size="sm")
                note = gr.HTML("")
                edit_md = gr.Markdown()
                edit_table = gr.Dataframe(headers=BEFORE_AFTER_HEADERS, label="Top candidates before and after",
                                          interactive=False, wrap=True, column_widths=["8%", "46%", "46%"],
                                          visible=False, elem_classes="fit-table")
    walked = gr.State(None)  # the last walkthrough's SearchResult: the query and ranking an edit is put against
    outputs = [prompt_md, tokens_html, decision_md, figure, cot_md, cot_html, pooling_md, pooling_html, ranking_md,
               table, gallery, figure_csv, walked, edit_box, cot_edit, edit_md, edit_table, note]
    inputs = [task, instruction, text, image, mode, bias, k, qid]
    model = {"concurrency_limit": 1, "concurrency_id": "model", "api_visibility": "private"}

    def run(*args):
        yield from run_walkthrough(services, *args)

    go_on = gr.State(False)  # whether the event before a chained run set up a whole query

    def run_if(go_on_in, *args):
        if go_on_in:
            yield from run_walkthrough(services, *args)
        else:
            yield [gr.skip()] * N_OUTPUTS

    def change_task(task_name: str, qid_in: str):
        """Whatever set the task (a click, a link): its examples and instruction; the inputs it does not take
        cleared and hidden. The benchmark query stays when it is one of the new task's (a link sets both at
        once), else it is dropped. The query text is never read: the value a component sends can be older than
        the event that set the task (a State's, read here, cannot)."""
        t = tasks[task_name]
        keep = qid_in if qid_in in qids_of[task_name] else ""
        return (gr.Dataset(samples=example_samples(examples_of[task_name], services.image_path)),
                instruction_for(examples_of[task_name], t.instructions[0], keep), keep,
                gr.Textbox(visible=True) if t.takes_text else gr.Textbox(value="", visible=False),
                gr.Image(visible=True) if t.takes_image else gr.Image(value=None, visible=False))

    def pick_example(task_name: str, index: int | None):
        """An example's query, set up as the evaluation ran it (reasoning auto, no routing bias)."""
        exs = examples_of[task_name]
        if index is None or not 0 <= int(index) < len(exs):
            return (gr.skip(),) * 6
        e = exs[int(index)]
        img = Image.open(services.image_path(e.image)) if e.image else None
        return e.text or "", img, e.qid, e.instruction or tasks[task_name].instructions[0], "auto", 0.0

    task.change(change_task, [task, qid], [examples, instruction, qid, text, image], api_visibility="private")
    text.input(lambda: "", None, qid, api_visibility="private")  # an edited query is no longer the benchmark one
    image.input(lambda: "", None, qid, api_visibility="private")
    go_btn.click(run, inputs, outputs, **model)
    examples.click(pick_example, [task, examples], [text, image, qid, instruction, mode, bias],
                   api_visibility="private").then(run, inputs, outputs, **model)

    # ---- the chain of thought as an experiment: the walked query re-embedded after an edited, blank or borrowed one
    edit_results = [edit_md, edit_table, note]
    reembed.click(lambda before, cot: run_edit(services, before, cot), [walked, cot_edit], edit_results, **model)
    blank.click(lambda: "", None, cot_edit, api_visibility="private").then(
        lambda before, cot: run_edit(services, before, cot), [walked, cot_edit], edit_results, **model)
    borrowed = gr.State("")  # what the borrow click said, kept under the buttons after its re-embedding
    go_edit = gr.State(False)

    def run_edit_if(go_edit_in, said, before, cot):
        if not go_edit_in:
            return [gr.skip(), gr.skip(), said or gr.skip()]
        md, rows, warn = run_edit(services, before, cot)
        return [md, rows, warn or said]

    borrow.click(lambda before: borrow_cot(services, before), [walked], [cot_edit, borrowed, go_edit],
                 api_visibility="private").then(run_edit_if, [go_edit, borrowed, walked, cot_edit], edit_results,
                                                **model)

    # ---- a deep link (ui.py reads it on load): its query in the inputs, walked through at once when it is whole
    restore = gr.State(None)

    def apply_link(restored):
        if restored is None:
            return (*(gr.skip() for _ in range(7)), False)
        f = linked_inputs(services, examples_of, restored)
        t = tasks[f.task]
        return (f.task, gr.Textbox(value=f.text, visible=t.takes_text), gr.Image(value=f.image, visible=t.takes_image),
                f.qid, f.instruction, f.mode, f.bias, f.run)

    restore.change(apply_link, restore, [task, text, image, qid, instruction, mode, bias, go_on],
                   api_visibility="private").then(run_if, [go_on, *inputs], outputs, **model)
    return LinkSlots(fields=(task, text, qid, mode, bias), restore=restore)
