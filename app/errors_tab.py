"""Error inspection tab: which benchmark queries miss, and what reasoning did to their gold candidate.

The handlers are plain functions of the services (called directly by the tests); `build_errors_tab` wires
them to components. The per-query table stays in `services.queries`: events carry only the filter values,
the selected query id and the (pair, query id) keys the embedding map sends (`MapLink`), never the table.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from analysis.errors import QueryDetail, available_views, filter_errors, query_detail
from trace_core.records import check_k

from .display import STOP_NOTES, candidate_name
from .map_tab import MapLink
from .services import Services
from .usecases import UserError, checked

NO_TABLE = ("No per-query table is loaded for this model. Produce one with "
            "`python -m trace_core.evaluate ... --counterfactual` and start the app with "
            "`--analysis OUT/queries.parquet`.")
DEFAULT_VIEW = "failures only"
DEFAULT_K = 5
STOP_WORDS = {"max_tokens": "cap reached: `<|emb|>` forced", "eos": "end of sequence: `<|emb|>` forced",
              "emb": "the model ended its reasoning itself"}


@dataclass
class CandidateView:
    """One candidate as the detail view shows it; `note` says in plain words what could not be shown."""

    did: str
    role: str  # "gold" | "top-1"
    found: bool  # in the task's local pool
    text: str | None = None
    image: str | None = None  # absolute path of its image, when it has one and the file exists
    rank: int | None = None  # on the route taken, when known
    score: float | None = None  # on the route taken, when known
    gold: bool = False
    note: str = ""
    shows: str | None = None  # what its image shows, when the data names it (`services.image_names`)


@dataclass
class ErrorDetail:
    query: QueryDetail
    task_label: str
    query_image: str | None  # absolute path
    gold: list[CandidateView]  # the best-ranked positive first
    top1: CandidateView | None
    k: int
    notes: list[str] = field(default_factory=list)  # problems worth a line (missing files, ...)


# ------------------------------------------------------------------------------------------ handlers
def analysis_table(services: Services) -> pd.DataFrame:
    if services.queries is None:
        raise UserError(NO_TABLE)
    return services.queries


def _k(k: Any) -> int:
    return checked(check_k, k)


def task_choices(services: Services) -> list[tuple[str, str]]:
    """("all tasks", "all") and one (label, pair) per pair of the table."""
    pairs = sorted(set(analysis_table(services)["pair"]))
    return [("all tasks", "all")] + [(services.tasks[p].label if p in services.tasks else p, p) for p in pairs]


def listing(services: Services, view: str, pair: str | None, k: Any = DEFAULT_K, only: dict | None = None
            ) -> pd.DataFrame:
    """The queries a view keeps, as the table shows them (hit/miss in words, margins rounded). `only`: what the
    embedding map sent (`MapLink.to_errors`, {"keys": [[pair, qid], ...]}): those queries alone."""
    k = _k(k)
    try:
        shown = filter_errors(analysis_table(services), view, pair, k, _keys(only))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    shown[f"hit@{k}"] = shown[f"hit@{k}"].map({True: "hit", False: "miss"})
    shown["score margin"] = shown["score margin"].round(4)
    return shown


def _keys(only: dict | None) -> list | None:
    return list(only["keys"]) if only and only.get("keys") else None


def listing_summary(services: Services, shown: pd.DataFrame, view: str, k: Any = DEFAULT_K,
                    only: dict | None = None) -> str:
    total = len(analysis_table(services))
    keys = _keys(only)
    among = f" among the **{len(keys)}** queries selected on the embedding map" if keys else ""
    if shown.empty:
        return f"No query matches **{view}**{among} with these filters (k = {_k(k)})."
    return (f"**{len(shown)}** of {total} queries match **{view}**{among} (a hit = the gold candidate in the top "
            f"{_k(k)} on the route taken). Click a column header to sort, a row to inspect the query.")


def map_keys(shown: pd.DataFrame, what: str) -> dict:
    """What "Show these on the map" sends (`MapLink.to_map`): the listed queries' keys; `rev` makes every click
    new to the map, even with the same rows."""
    if shown.empty:
        raise UserError("The table lists no query: change the filters first.")
    return {"keys": [[str(p), str(q)] for p, q in zip(shown["pair"], shown["qid"], strict=True)], "what": what,
            "rev": time.monotonic_ns()}


def selected_query(services: Services, view: str, pair: str | None, k: Any, index: Any,
                   row_value: list | None = None, only: dict | None = None) -> tuple[str, str]:
    """The (pair, qid) of the row a Dataframe selection points at: from the row's values when the event
    carries them, else from the row index into the current listing."""
    table = analysis_table(services)
    if row_value and len(row_value) >= 2:
        p, q = str(row_value[0]), str(row_value[1])
        if ((table["pair"] == p) & (table["qid"].astype(str) == q)).any():
            return p, q
    shown = listing(services, view, pair, k, only)
    row = index[0] if isinstance(index, (list, tuple)) else index
    if not isinstance(row, int) or not 0 <= row < len(shown):
        raise UserError("That row is no longer in the table (the filters changed); pick a row again.")
    return str(shown["pair"].iloc[row]), str(shown["qid"].iloc[row])


def _image(services: Services, rel: str | None, what: str, notes: list[str]) -> str | None:
    if not rel:
        return None
    try:
        return services.image_path(rel)
    except (OSError, ValueError) as exc:  # missing file, or a path that would leave the data root
        notes.append(f"The image of {what} cannot be shown: {exc}")
        return None


def candidate_view(services: Services, pair: str, did: str, role: str, rank: int | None = None,
                   score: float | None = None, gold: bool = False) -> CandidateView:
    """A candidate of a task's pool by id; a clear note instead of an error when it cannot be found."""
    task = services.tasks.get(pair)
    if task is None:
        return CandidateView(did, role, False, rank=rank, score=score, gold=gold,
                             note=f"Task {pair!r} is not loaded in this app, so its candidates cannot be shown.")
    try:
        c = task.candidate(did)
    except KeyError:
        return CandidateView(did, role, False, rank=rank, score=score, gold=gold,
                             note=f"Candidate `{did}` is not in the local pool of {pair}, so it cannot be "
                                  "retrieved or shown here.")
    notes: list[str] = []
    image = _image(services, c.image_path, f"candidate `{did}`", notes)
    return CandidateView(did, role, True, c.text, image, rank, score, gold, " ".join(notes),
                         task.shows.get(c.image_path or ""))


def _known(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def error_detail(services: Services, pair: str | None, qid: str | None, k: Any = DEFAULT_K) -> ErrorDetail:
    """Everything the detail view shows about one query. UserError for an unknown or empty query id."""
    k = _k(k)
    if not qid or not str(qid).strip():
        raise UserError("Pick a query: click a row of the table, or type a query id.")
    try:
        d = query_detail(analysis_table(services), pair, str(qid))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    notes: list[str] = []
    task = services.tasks.get(d.pair)
    label = task.label if task else d.pair
    query_image = _image(services, d.query_image, "the query", notes)
    in_top = {did: (n, s) for n, (did, s) in enumerate(zip(d.top_dids, d.top_scores, strict=False), start=1)}
    order = ([d.gold_did] if d.gold_did else []) + [p for p in d.positives if p != d.gold_did]
    gold = []
    for did in order:
        if did == d.gold_did:
            rank, score = (int(d.rank_final) if _known(d.rank_final) else None), d.gold_score
        else:
            rank, score = in_top.get(did, (None, None))
        gold.append(candidate_view(services, d.pair, did, "gold", rank, score, gold=True))
    top1 = None
    if d.top1_did is not None:
        top1 = candidate_view(services, d.pair, d.top1_did, "top-1", 1, d.top1_score, gold=d.top1_did in d.positives)
    if not d.positives:
        notes.append("This query has no gold candidate listed.")
    elif d.gold_did is None:
        notes.append("None of this query's gold candidates is in the local pool: it cannot be a hit here.")
    return ErrorDetail(d, label, query_image, gold, top1, k, notes)


# ------------------------------------------------------------------------------------------ rendering
def _rank(x: float | None) -> str:
    return str(int(x)) if _known(x) else "–"


def _score(x: float | None) -> str:
    return f"{x:.4f}" if _known(x) else "–"


def _esc(text: str | None) -> str:
    return html.escape(text) if text else ""


def ranks_sentence(d: QueryDetail, k: int) -> str:
    """What the route did to the gold candidate, in one or two plain sentences."""
    if not _known(d.rank_final):
        return "No gold candidate is in the local pool, so there is no rank to compare."
    hit = f"a **hit** at k = {k}" if d.rank_final <= k else f"a **miss** at k = {k}"
    if d.route == "direct":
        out = f"The model embedded at once, so the gold rank is the direct one: {_rank(d.rank_final)} ({hit})."
        if _known(d.rank_always):
            change = d.rank_direct - d.rank_always
            if change > 0:
                out += (f" Forcing reasoning on would have moved it **up** {int(change)} places, "
                        f"to {_rank(d.rank_always)}.")
            elif change < 0:
                out += (f" Forcing reasoning on would have moved it **down** {int(-change)} places, "
                        f"to {_rank(d.rank_always)}: skipping was right.")
            else:
                out += " Forcing reasoning on would not have changed it."
        return out
    change = d.rank_change
    if not _known(change):
        return f"The model reasoned; gold rank {_rank(d.rank_final)} ({hit})."
    if change > 0:
        moved = f"Reasoning moved the gold **up** {int(change)} places"
    elif change < 0:
        moved = f"Reasoning moved the gold **down** {int(-change)} places"
    else:
        moved = "Reasoning left the gold where it was"
    return f"{moved} (rank {_rank(d.rank_direct)} without it, {_rank(d.rank_final)} with it): {hit}."


def margin_sentence(det: ErrorDetail) -> str:
    d = det.query
    if not _known(d.rank_final):
        return ""
    if d.rank_final == 1:
        return "The gold candidate is the top-1: score margin 0."
    top = f"`{d.top1_did}`" if d.top1_did else "the top-1"
    return (f"Score margin **{d.margin:+.4f}**: the gold scores {abs(d.margin):.4f} below {top} on the route "
            "taken (cosine similarity; the closer to 0, the nearer a miss was to a hit).")


def detail_markdown(det: ErrorDetail) -> str:
    """The header of the detail view: query, instruction, route, ranks table and what they mean."""
    d = det.query
    if d.route == "direct":
        route = "direct: embedded at once, no chain of thought"
    else:
        stop = STOP_WORDS.get(d.stop_reason, "")
        route = f"reasoned before embedding ({d.cot_tokens} CoT tokens{'; ' + stop if stop else ''})"
    text = _esc(d.query_text) or "(no text: the query is the image)"
    lines = [f"### Query `{d.qid}` · {_esc(det.task_label)}",
             f"**Query text:** {text}",
             f"**Instruction:** {_esc(d.instruction) or '(none)'}",
             f"**Route:** {route} · P(`<|emb|>` first) = {d.p_emb:.3f}", "",
             "| gold candidate | rank | score |", "|---|---|---|",
             f"| without reasoning (direct embedding) | {_rank(d.rank_direct)} | {_score(d.gold_score_direct)} |",
             f"| **route taken ({d.route})** | **{_rank(d.rank_final)}** | **{_score(d.gold_score)}** |"]
    if d.rank_always is not None:
        lines.append(f"| reasoning forced on | {_rank(d.rank_always)} | – |")
    lines += ["", ranks_sentence(d, det.k), "", margin_sentence(det)]
    lines += [f"> {_esc(n)}" for n in det.notes]
    return "\n".join(lines)


def candidate_markdown(c: CandidateView | None) -> str:
    if c is None:
        return "No ranked candidates were stored for this query."
    tag = " · **gold**" if c.gold else ""
    where = f"rank {c.rank}" if c.rank is not None else "rank not stored (outside the stored top 10)"
    lines = [f"`{c.did}` · {where} · score {_score(c.score)}{tag}"]
    if c.text:
        lines.append(f"> {_esc(c.text)}")
    elif c.found and c.image:
        lines.append(f"> {_esc(candidate_name(None, c.image, shows=c.shows))} (an image without text)")
    elif c.found and not c.note:
        lines.append("(no text)")
    if c.note:
        lines.append(f"*{_esc(c.note)}*")
    return "\n\n".join(lines)


def _pil(path: str | None) -> Image.Image | None:
    """The image as PIL, so that gradio copies it to its cache whatever folder the data lives in."""
    if not path:
        return None
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError:
        return None


def show_detail(services: Services, pair: str | None, qid: str | None, k: Any = DEFAULT_K) -> tuple:
    """The detail view's outputs: (message, detail box, header, query image, CoT, gold image, gold text,
    top-1 image, top-1 text, other gold gallery). A mistake gives a message and hides the box."""
    try:
        det = error_detail(services, pair, qid, k)
    except UserError as exc:
        return (f"**{exc}**", gr.Column(visible=False), *(gr.skip() for _ in range(8)))
    d = det.query
    best = det.gold[0] if det.gold else None
    others = [(_pil(c.image), f"{c.did} · rank {c.rank if c.rank is not None else '?'}") for c in det.gold[1:]
              if c.image]
    others = [(img, cap) for img, cap in others if img is not None]
    other_text = [candidate_markdown(c) for c in det.gold[1:]]
    gold_md = candidate_markdown(best) if best else "No gold candidate is listed for this query."
    if other_text:
        gold_md += "\n\n**Other gold candidates:**\n\n" + "\n\n".join(other_text)
    cot = d.cot if d.route == "reason" else "(none: the model embedded at once)"
    return ("", gr.Column(visible=True), detail_markdown(det),
            gr.Image(value=_pil(det.query_image), visible=det.query_image is not None),
            gr.Textbox(value=cot, label=f"Chain of thought ({d.cot_tokens} tokens)"
                       + (f" · ⚠ {STOP_NOTES[d.stop_reason]}" if d.stop_reason in STOP_NOTES else "")),
            gr.Image(value=_pil(best.image if best else None), visible=bool(best and best.image)),
            gold_md,
            gr.Image(value=_pil(det.top1.image if det.top1 else None), visible=bool(det.top1 and det.top1.image)),
            candidate_markdown(det.top1),
            gr.Gallery(value=others, visible=bool(others)))


# ------------------------------------------------------------------------------------------ UI
def _datatypes(shown: pd.DataFrame) -> list[str]:
    return ["number" if pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) else "str"
            for t in shown.dtypes]


def build_errors_tab(services: Services, link: MapLink | None = None) -> None:
    if services.queries is None:
        gr.Markdown(NO_TABLE)
        return
    table = services.queries
    views = available_views(table)
    first = listing(services, DEFAULT_VIEW, "all", DEFAULT_K)
    gr.Markdown(
        "One row per benchmark query of the loaded evaluation. **gold rank direct**: where the gold candidate "
        "lands with the embedding read at once (no reasoning); **gold rank final**: with the route the model "
        "took; **rank change** = direct − final, positive when reasoning moved the gold up. **score margin** = "
        "gold score − top-1 score on the route taken: 0 when the gold is the top-1, and the more negative, "
        "the further the gold lost. An empty rank means no gold candidate is in the local pool."
        + (" **gold rank always reason**: with reasoning forced on." if "gold_rank_always" in table else "")
    )
    with gr.Row():
        view = gr.Dropdown(views, value=DEFAULT_VIEW, label="Show")
        task = gr.Dropdown(task_choices(services), value="all", label="Task")
        k = gr.Slider(1, 50, value=DEFAULT_K, step=1, label="k (a hit = the gold in the top k)")
    summary = gr.Markdown(listing_summary(services, first, DEFAULT_VIEW, DEFAULT_K))
    # the query text gets a quarter of the width, so that the rank columns stay in view
    widths = [("26%" if c == "query" else f"{74 / (len(first.columns) - 1):.1f}%") for c in first.columns]
    listing_df = gr.Dataframe(first, datatype=_datatypes(first), interactive=False, wrap=True, max_height=420,
                              label="Queries", column_widths=widths)
    with gr.Row():
        qid = gr.Textbox(label="Query id", placeholder="click a row above, or type an id (e.g. 9:100) and press Enter",
                         scale=4)
        show = gr.Button("Show query", scale=1)
    only = link.to_errors if link is not None else gr.State(None)  # what the map sent, if anything
    with gr.Row(visible=link is not None, elem_classes="trace-errors-link"):
        to_map = gr.Button("Show these on the map", size="sm", visible=services.map is not None)
        show_all = gr.Button("Show every query again (drop the map's selection)", size="sm")
    message = gr.Markdown()
    with gr.Column(visible=False) as box:
        header = gr.Markdown()
        with gr.Row():
            query_image = gr.Image(label="Query image", type="pil", height=240, interactive=False)
            cot = gr.Textbox(label="Chain of thought", lines=8, max_lines=16, interactive=False)
        with gr.Row():
            with gr.Column():
                gr.Markdown("#### Gold candidate (best-ranked on the route taken)")
                gold_image = gr.Image(label="gold", type="pil", height=240, interactive=False)
                gold_md = gr.Markdown()
            with gr.Column():
                gr.Markdown("#### Top-1 retrieved candidate")
                top_image = gr.Image(label="top-1", type="pil", height=240, interactive=False)
                top_md = gr.Markdown()
        others = gr.Gallery(label="Other gold candidates", columns=5, height=180, allow_preview=False,
                            visible=False)
    detail_outputs = [message, box, header, query_image, cot, gold_image, gold_md, top_image, top_md, others]

    def refresh(view_in: str, task_in: str, k_in: float, only_in: dict | None = None):
        try:
            shown = listing(services, view_in, task_in, k_in, only_in)
        except UserError as exc:  # a warning; the last listing stays
            gr.Warning(str(exc))
            return gr.skip(), gr.skip()
        return shown, listing_summary(services, shown, view_in, k_in, only_in)

    for control in (view, task, k, only):
        control.change(refresh, [view, task, k, only], [listing_df, summary], api_visibility="private")

    def send_to_map(view_in: str, task_in: str, k_in: float, only_in: dict | None):
        try:
            shown = listing(services, view_in, task_in, k_in, only_in)
            sent = map_keys(shown, f"{view_in}, {'all tasks' if task_in == 'all' else task_in}")
        except UserError as exc:
            gr.Warning(str(exc))
            return gr.skip()
        gr.Info(f"{len(sent['keys'])} queries are lit on the Embedding map tab.")
        return sent

    if link is not None:
        to_map.click(send_to_map, [view, task, k, only], link.to_map, api_visibility="private")
        show_all.click(lambda: None, None, only, api_visibility="private")

    def on_select(view_in: str, task_in: str, k_in: float, only_in: dict | None, evt: gr.SelectData):
        try:
            p, q = selected_query(services, view_in, task_in, k_in, evt.index, evt.row_value, only_in)
        except UserError as exc:
            return (gr.skip(), f"**{exc}**", *(gr.skip() for _ in detail_outputs[1:]))
        return (q, *show_detail(services, p, q, k_in))

    listing_df.select(on_select, [view, task, k, only], [qid, *detail_outputs], api_visibility="private")

    def by_id(task_in: str, qid_in: str, k_in: float):
        return show_detail(services, task_in, qid_in, k_in)

    qid.submit(by_id, [task, qid, k], detail_outputs, api_visibility="private")
    show.click(by_id, [task, qid, k], detail_outputs, api_visibility="private")
