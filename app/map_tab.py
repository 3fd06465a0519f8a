"""Embedding map tab: where candidates and queries lie, how reasoning moves a query, and which items sit together.

The UMAP coordinates are computed once per model and pool (analysis.embedding_map, cached on disk). The
figure's points go to the browser once, as a static JSON file fetched by one `gr.HTML` that draws them with
plotly.js (assets/map.js; not as a prop: Gradio compares a component's props on every update); colouring is
switched in the browser. Every later event sends only a small *highlight* (the
focused point, its top-k neighbours, its gold candidates, the direct -> final path, the lit points), which the
browser overlays on the same figure. A box or lasso selection sends only its point numbers; the table, the
gallery and the exports are built here from the app's own copy of the map (analysis.map_selection). The map
and the error table send each other (pair, query id) keys through a `MapLink`.
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import plotly
from gradio import FileData
from gradio.utils import get_upload_folder

from analysis.map_selection import (
    Lit,
    SelectionError,
    check_points,
    export_files,
    kinds_mask,
    nearest,
    neighbours,
    query_keys,
    query_points,
    selection_rows,
    text_matches,
    write_csv,
)
from trace_core.records import REASONING_MODES, InputError, check_k

from . import first_visit, scratch, usecases
from .display import QUERY_IMAGE, STOP_NOTES, cap_warning
from .services import Services
from .usecases import UserError, open_api_image

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

JS = (Path(__file__).resolve().parents[1] / "assets" / "map.js").read_text(encoding="utf-8")
TEMPLATE = """
<div class="trace-map">
  <div class="trace-map-bar">
    <label>Colour by <select class="trace-map-colour">
      <option value="modality">modality</option><option value="pair">task</option>
      <option value="route">route</option><option value="hit">hit or miss (R@5)</option>
    </select></label>
    <label>Drag to <select class="trace-map-drag">
      <option value="select">box select</option><option value="lasso">lasso select</option>
      <option value="pan">pan</option><option value="zoom">zoom</option>
    </select></label>
    <span class="trace-map-save">Save the figure: <button class="trace-map-png" type="button">PNG</button>
      <button class="trace-map-svg" type="button">SVG</button></span>
    <span class="trace-map-key">● candidate · ◇ query, direct embedding · ◆ query, final embedding ·
      ★ focused point · ➝ path from direct to final · ○ lit (selection, search, neighbours)</span>
  </div>
  <div class="trace-map-plot" style="height: 640px;"></div>
</div>
"""
TABLE_ROWS = 200  # rows the table shows; the CSV and JSON exports hold every lit point
GALLERY_ITEMS = 24  # images the gallery shows
SEARCH_MATCHES = 500  # at most this many points light up for a text matched against labels
TABLE_HEADERS = ["point", "kind", "id", "task", "label", "route", "gold rank", "hit", "similarity"]
_revision = itertools.count(1)  # every highlight Python sends is new to the page, even when equal to the last one


@dataclass
class MapLink:
    """What the map and the error table send each other: (pair, query id) keys, in two gr.State of the session
    (ids only, never services). The app factory makes one, outside the tabs, and passes it to both."""

    to_map: gr.State  # {"keys": [[pair, qid], ...], "what": str, "rev": int} from "Show these on the map"
    to_errors: gr.State  # {"keys": [...], "rev": int} from "Filter the error table to this selection"; or None

    @classmethod
    def create(cls) -> MapLink:
        return cls(gr.State(None), gr.State(None))


def highlight(**parts) -> dict:
    return {**parts, "rev": next(_revision)}


def _xy(services: Services, point: int) -> dict:
    row = services.map.points.iloc[point]
    return {"x": round(float(row["x"]), 4), "y": round(float(row["y"]), 4)}


def _image_md(services: Services, rel: str | None) -> str | None:
    return services.image_path(rel) if isinstance(rel, str) and rel else None


def pick(services: Services, value: dict | None) -> tuple[dict, str, str | None]:
    """A clicked point: (highlight, description, image path). Queries show their path and neighbours."""
    value = dict(value or {})
    emap = services.map
    point = value.get("picked")
    if emap is None or point is None:
        return value, "Click a point of the map to see the item.", None
    try:
        row = emap.points.iloc[int(point)]
    except (IndexError, ValueError, TypeError):
        return value, f"Point {point!r} is not on the map.", None
    image = _image_md(services, row["image"])
    if row["kind"] == "candidate":
        owners = [t for t in services.tasks.values() if t.has_candidate(row["id"])]
        name = owners[0].name_of(row["id"], None) if owners else str(row["label"])
        desc = (f"**Candidate `{row['id']}`** ({row['modality']}), in the pool of "
                f"{', '.join(t.name for t in owners)}:\n\n> {html.escape(name)}")
        return ({"focus": {**_xy(services, int(point)), "label": f"candidate {row['id']}: {name[:60]}"}}, desc,
                image)
    pair, qid = row["pair"], row["id"]
    final = emap.query_point(pair, qid, "query (final)")
    direct = emap.query_point(pair, qid, "query (direct)")
    t = services.queries
    q = t[(t["pair"] == pair) & (t["qid"] == qid)].iloc[0] if t is not None else None
    highlight = {"focus": {**_xy(services, final), "label": f"query {qid} (final)"}, "picked": int(point)}
    if q is not None and q["route"] == "reason":
        highlight["from"] = _xy(services, direct)
    if q is not None:
        highlight["neighbours"] = [p for d in list(q["top_dids"])[:5] if (p := emap.candidate_point(d)) is not None]
        highlight["gold"] = [p for d in q["positives"] if (p := emap.candidate_point(d)) is not None]
    lines = [f"**Benchmark query `{qid}`** ({pair}, {row['modality']}): {html.escape(str(row['label']))}"]
    if q is not None:
        lines.append(f"Route **{q['route']}** · P(<|emb|> first) = {q['p_emb']:.2f} · gold rank direct "
                     f"{_rank(q['gold_rank_direct'])} → final {_rank(q['gold_rank'])}")
        if q["cot"]:
            stop = STOP_NOTES.get(q.get("stop_reason"), "")
            lines.append(f"CoT: *{html.escape(q['cot'])}*" + (f" ⚠ **{html.escape(stop)}**" if stop else ""))
        if q["route"] == "reason":
            lines.append("The red arrow goes from the query's direct embedding (◇) to its embedding after "
                         "reasoning (◆).")
    lines.append("Circled: its top-5 candidates (black) and its gold (green).")
    return highlight, "\n\n".join(lines), image


def _rank(r: float) -> str:
    return "—" if r is None or not np.isfinite(r) else str(int(r))


def place_query(services: Services, task_name: str, text, image, mode: str, k: int) -> tuple[dict, str]:
    """A new query on the map (`usecases.place_query`): the highlight the browser draws and its description."""
    p = usecases.place_query(services, task_name, text, image, mode, k)
    highlight = {"focus": {"x": p.focus[0], "y": p.focus[1], "label": "your query"}, "neighbours": p.neighbours}
    if p.start is not None:
        highlight["from"] = {"x": p.start[0], "y": p.start[1]}
    r, k = p.search.result, len(p.search.hits)
    lines = [f"Route **{r.route}** · P(<|emb|> first) = {r.p_emb:.2f} · {r.cot_tokens} CoT tokens · "
             f"{r.latency_s:.2f} s"]
    if p.moved is not None:
        lines.append(f"CoT: *{html.escape(r.cot)}*")
        cap = cap_warning(r, getattr(services.encoder, "max_cot_tokens", None))
        if cap:
            lines.append(f"⚠ **{html.escape(cap)}**")
        lines.append(f"Reasoning moved the query along the red arrow: {p.moved} of its top-{k} changed.")
    top = "; ".join(f"#{h.rank} {html.escape(h.caption)}{' ✓ gold' if h.gold else ''}" for h in p.search.hits[:5])
    lines.append(f"Its top hits: {top}.")
    lines.append(f"Placed at the similarity-weighted mean of its top-{k} candidates (circled).")
    return highlight, "\n\n".join(lines)


# ------------------------------------------------------------------------------------------ lit points
def select_points(services: Services, raw) -> Lit:
    """A box or lasso selection made in the page: the point numbers it sent, checked against the map."""
    emap = services.map
    try:
        points = check_points(raw, len(emap.points))
    except SelectionError as exc:
        raise UserError(str(exc)) from exc
    if not points:
        raise UserError("The box or lasso holds no point: draw it around some points of the map.")
    return Lit("selection", points, "selected with the box or lasso")


def search_map(services: Services, task_name: str, text: str | None, k) -> Lit:
    """The points nearest to a text: embedded by the loaded model as a query of the task (at once, without
    reasoning, so that a search is quick), compared by cosine with every candidate and final query embedding;
    matched against the points' labels instead when the task takes no text-only query."""
    emap = services.map
    text = (text or "").strip()
    if not text:
        raise UserError("Type something to search the map for.")
    k = usecases.checked(check_k, k)
    among = kinds_mask(emap.points)
    task = services.tasks.get(task_name)
    if emap.vectors is not None and task is not None and task.query_modality == "text":
        res = usecases.search(services, task_name, text, None, None, "never", 1)
        try:
            rows, sims = nearest(emap.vectors, res.result.embedding, k, among)
        except SelectionError as exc:
            raise UserError(str(exc)) from exc
        return Lit("search", rows.tolist(), f"nearest to “{text}”, embedded as a query of {task.label} (no "
                   "reasoning), by cosine similarity", sims.tolist())
    why = ("the map keeps no vectors" if emap.vectors is None else
           f"{task.label if task else task_name!r} takes no text-only query")
    try:
        rows = text_matches(emap.points, text, SEARCH_MATCHES, among)
    except SelectionError as exc:
        raise UserError(str(exc)) from exc
    if not rows:
        raise UserError(f"No item's text contains “{text}” ({why}, so the text was matched, not embedded).")
    return Lit("search", rows, f"whose text contains “{text}” ({why}, so the text was matched, not embedded)")


def neighbours_lit(services: Services, point: int, k) -> Lit | None:
    """A clicked point and its k nearest points in embedding space (cosine over the stored vectors); None when
    the map keeps no vectors."""
    emap = services.map
    if emap.vectors is None:
        return None
    k = usecases.checked(check_k, k)
    rows, sims = neighbours(emap.vectors, point, k, kinds_mask(emap.points))
    row = emap.points.iloc[point]
    return Lit("neighbours", [point, *rows.tolist()], f"{row['kind']} `{row['id']}` and its {len(rows)} nearest "
               "neighbours in embedding space (cosine similarity; not distance on this 2-D map)",
               [1.0, *sims.tolist()])


def errors_lit(services: Services, sent: dict | None) -> Lit:
    """The error table's queries ("Show these on the map"): their direct and final points."""
    keys = (sent or {}).get("keys") or []
    if not keys:
        raise UserError("The error table sent no query: its filters keep none.")
    points = query_points(services.map.points, keys)
    if not points:
        raise UserError("None of these queries is on the map (a large benchmark is sampled on the map).")
    shown = len(query_keys(services.map.points, points))
    missing = f"; {len(keys) - shown} are not on the map" if shown < len(keys) else ""
    return Lit("errors", points, f"the error table's {len(keys)} queries ({sent.get('what', '')}{missing}), "
               "each at its direct and final embedding")


def _gold(r: float) -> str:
    return "" if r is None or not np.isfinite(r) else str(int(r))


def lit_table(services: Services, lit: Lit | None) -> pd.DataFrame:
    """The table under the map: the first TABLE_ROWS lit points."""
    if lit is None:
        return pd.DataFrame(columns=TABLE_HEADERS)
    rows = selection_rows(services.map.points, lit.points[:TABLE_ROWS], services.queries,
                          lit.similarity[:TABLE_ROWS] if lit.similarity is not None else None)
    rows["gold rank"] = rows["gold rank"].map(_gold)
    rows["similarity"] = rows["similarity"].map("{:.4f}".format) if "similarity" in rows else ""
    return rows.rename(columns={"pair": "task"})[TABLE_HEADERS]


def lit_gallery(services: Services, lit: Lit | None) -> list[tuple[str, str]]:
    """Images of the lit points that have one (the first GALLERY_ITEMS), captioned with kind, id and label."""
    if lit is None:
        return []
    images = services.map.points["image"].to_numpy()
    out = []
    for n in lit.points:
        if not isinstance(images[n], str) or not images[n]:  # most points of a large selection: looked up cheaply
            continue
        row = services.map.points.iloc[n]
        try:
            path = services.image_path(row["image"])
        except (OSError, ValueError):  # a file gone since the map was made: left out of the gallery
            continue
        out.append((path, f"{row['kind']} {row['id']} · {str(row['label'])[:60]}"))
        if len(out) == GALLERY_ITEMS:
            break
    return out


def lit_summary(services: Services, lit: Lit | None) -> str:
    if lit is None:
        return ("Nothing is selected. Drag a box or a lasso over the map, search it, click a point, or send the "
                "error table's queries here.")
    n = len(lit.points)
    more = (f" The table shows the first {TABLE_ROWS}; the CSV and JSON exports hold all {n:,}."
            if n > TABLE_ROWS else "")
    return f"**{n:,} points** {html.escape(lit.about)}: {lit.counts(services.map.points)}.{more}"


def export_lit(services: Services, lit: Lit, folder: str | Path) -> tuple[Path, Path]:
    """The lit points as CSV and JSON files (every point, not only the table's rows), written atomically."""
    about = {"what": lit.about, "model": services.fingerprint, "map": services.map.fingerprint}
    return export_files(services.map.points, lit, services.queries, folder, about)


def export_map(services: Services, folder: str | Path) -> Path:
    """Every point of the map figure as CSV (the figure's data)."""
    emap = services.map
    rows = selection_rows(emap.points, range(len(emap.points)), services.queries)
    return write_csv(rows, Path(folder) / f"embedding-map-{emap.fingerprint}.csv")


def keys_of(services: Services, lit: Lit | None) -> list[list[str]]:
    """The (pair, query id) of the benchmark queries among lit points: what the error table can filter by."""
    if lit is None:
        raise UserError("Nothing is selected on the map: select, search or click first.")
    keys = query_keys(services.map.points, lit.points)
    if not keys:
        raise UserError("The selection holds no benchmark query (only candidates), so it cannot filter the error "
                        "table.")
    return [list(k) for k in keys]


# ------------------------------------------------------------------------------------------ UI
def build_map_tab(services: Services, link: MapLink | None = None) -> None:
    emap = services.map
    if emap is None:
        gr.Markdown("No embedding map was built in this session (the app was started with `--no-map`).")
        return
    counts = emap.points["kind"].value_counts()
    sample = emap.sample.sentence() if emap.sample else f"Showing {len(emap.points):,} points."
    gr.Markdown(
        f"UMAP of **{counts.get('candidate', 0)} candidates** and **{counts.get('query (final)', 0)} benchmark "
        "queries**, each query twice: its direct embedding (◇, the state before `<|emb|>` at the first step) and "
        "its final one (◆, after the chain of thought when it reasoned). Computed once and cached. A new query is "
        "placed from its nearest candidates, not re-projected. Click a point to see the item and its nearest "
        "neighbours in embedding space; drag a box or a lasso to list the points inside (the others are dimmed, "
        "not hidden). " + sample, elem_classes="trace-map-intro")
    tasks = services.tasks
    first = first_visit.default_task(services)  # a task that takes a typed query
    points = emap.write_client(scratch.pinned("map"))  # the page loads it by path: never pruned
    gr.set_static_paths([PLOTLY_JS, points, str(Path(services.root).resolve())])  # and the gallery's images

    def placeholder(task_name: str) -> str:
        ex = next((e for e in first_visit.example_queries(services, task_name, 4) if e.text), None)
        return f"e.g. {ex.text}" if ex else ""

    with gr.Row():
        with gr.Column(scale=3):
            emb_map = gr.HTML({}, html_template=TEMPLATE, js_on_load=JS, points_url=f"gradio_api/file={points}",
                              head=f'<script src="gradio_api/file={PLOTLY_JS}"></script>', elem_id="trace-map")
            with gr.Row(elem_classes="trace-map-search"):
                find = gr.Textbox(label="Search the map", placeholder="a few words: the nearest items light up",
                                  scale=4, elem_id="trace-map-find")
                find_go = gr.Button("Search the map", scale=1)
        with gr.Column(scale=1):
            task = gr.Dropdown([(t.label, n) for n, t in tasks.items()], value=first, label="Task")
            text = gr.Textbox(label="Query text", lines=2, visible=tasks[first].takes_text,
                              placeholder=placeholder(first))
            image = gr.Image(type="pil", label="Query image", height=140, visible=tasks[first].takes_image,
                             **QUERY_IMAGE)
            with gr.Row():
                mode = gr.Radio(list(REASONING_MODES), value="auto", label="Reasoning")
                k = gr.Slider(1, 20, value=5, step=1, label="top-k")
            go = gr.Button("Place on the map", variant="primary")
            detail = gr.Markdown("Click a point of the map to see the item.")
            detail_image = gr.Image(label="Item", height=160, interactive=False)
    summary = gr.Markdown(lit_summary(services, None), elem_classes="trace-map-summary")
    with gr.Row(elem_classes="trace-map-actions"):
        clear = gr.Button("Clear selection", size="sm")
        to_errors = gr.Button("Filter the error table to this selection", size="sm", visible=link is not None)
        csv_out = gr.DownloadButton("Selection as CSV", interactive=False, size="sm", elem_id="trace-map-csv")
        json_out = gr.DownloadButton("Selection as JSON", interactive=False, size="sm", elem_id="trace-map-json")
        gr.DownloadButton("Map data (CSV)", value=export_map(services, scratch.fresh("map")), size="sm", elem_id="trace-map-data")
    table = gr.Dataframe(lit_table(services, None), headers=TABLE_HEADERS, interactive=False, wrap=True,
                         max_height=420, label="Lit points", elem_classes=["fit-table", "trace-map-table"],
                         column_widths=["6%", "10%", "8%", "12%", "30%", "8%", "7%", "6%", "8%"])
    gallery = gr.Gallery(label="Their images", columns=8, height=200, allow_preview=True,
                         elem_classes="trace-map-gallery")
    current = gr.State(None)  # the session's lit points (a Lit: point numbers), for the exports and the link
    shown = [table, gallery, summary, current]
    # The progress of an event that answers the map shows on the summary (or the item), not as an overlay that
    # hides the plot while the person looks at it.
    private = {"api_visibility": "private", "show_progress_on": summary}

    def view(lit: Lit | None) -> tuple:
        return lit_table(services, lit), lit_gallery(services, lit), lit_summary(services, lit), lit

    def exports(lit: Lit | None):
        if lit is None:
            return gr.DownloadButton(value=None, interactive=False), gr.DownloadButton(value=None, interactive=False)
        csv_path, json_path = export_lit(services, lit, scratch.fresh("map"))
        return gr.DownloadButton(value=str(csv_path), interactive=True), \
            gr.DownloadButton(value=str(json_path), interactive=True)

    def on_select(evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        if data.get("cleared"):  # a double click on the map: plotly dropped its selection
            return (highlight(), *view(None))
        try:
            lit = select_points(services, data.get("points"))
        except UserError as exc:  # an empty box is a note; point numbers the map has not, a warning
            (gr.Info if not data.get("points") else gr.Warning)(str(exc))
            return (gr.skip(), *view(None))
        return (gr.skip(), *view(lit))  # the page already dims the others: nothing to send back to it

    emb_map.select(on_select, None, [emb_map, *shown], concurrency_limit=4, **private) \
        .then(exports, current, [csv_out, json_out], api_visibility="private")

    def on_pick(k_in, evt: gr.EventData):
        point = (getattr(evt, "_data", None) or {}).get("point")
        value, desc, item = pick(services, {"picked": point})
        if "focus" not in value:  # not a point of the map: said in the description, the rest stays
            gr.Warning(desc)
            return (gr.skip(), desc, gr.skip(), *(gr.skip() for _ in shown))
        try:
            lit = neighbours_lit(services, int(point), k_in)
        except UserError as exc:
            gr.Warning(str(exc))
            lit = None
        lit_part = {"lit": lit.points[1:], "lit_name": "nearest (cosine)", "ranked": True} if lit else {}
        return (highlight(**value, **lit_part), desc, item, *view(lit))

    emb_map.click(on_pick, [k], [emb_map, detail, detail_image, *shown], concurrency_limit=4,
                  **{**private, "show_progress_on": detail}) \
        .then(exports, current, [csv_out, json_out], api_visibility="private")

    def on_clear():
        return (highlight(), *view(None))

    clear.click(on_clear, None, [emb_map, *shown], **private) \
        .then(exports, current, [csv_out, json_out], api_visibility="private")

    def on_find(task_name, text_in, k_in):
        try:
            lit = search_map(services, task_name, text_in, k_in)
        except (UserError, InputError) as exc:  # a warning; the map and the last table stay
            gr.Warning(str(exc))
            return (gr.skip(), *(gr.skip() for _ in shown))
        return (highlight(lit=lit.points, lit_name="search matches", ranked=lit.similarity is not None),
                *view(lit))

    for trigger in (find_go.click, find.submit):
        trigger(on_find, [task, find, k], [emb_map, *shown], concurrency_limit=1, concurrency_id="model",
                **private).then(exports, current, [csv_out, json_out], api_visibility="private")

    if link is not None:
        def from_errors(sent):
            if not sent:
                return (gr.skip(), *(gr.skip() for _ in shown))
            try:
                lit = errors_lit(services, sent)
            except UserError as exc:
                gr.Warning(str(exc))
                return (gr.skip(), *(gr.skip() for _ in shown))
            return (highlight(lit=lit.points, lit_name="error table"), *view(lit))

        link.to_map.change(from_errors, link.to_map, [emb_map, *shown], **private) \
            .then(exports, current, [csv_out, json_out], api_visibility="private")

        def send_to_errors(lit: Lit | None):
            try:
                keys = keys_of(services, lit)
            except UserError as exc:
                gr.Warning(str(exc))
                return gr.skip()
            gr.Info(f"The error table (tab Error inspection) now lists only the {len(keys)} benchmark "
                    f"quer{'ies' if len(keys) != 1 else 'y'} of this selection.")
            return {"keys": keys, "rev": next(_revision)}

        to_errors.click(send_to_errors, current, link.to_errors, api_visibility="private")

    def change_task(task_name: str, text_in: str | None):
        t = tasks[task_name]  # the inputs it does not take are cleared and hidden
        return (gr.Textbox(value=text_in if t.takes_text else "", visible=t.takes_text,
                           placeholder=placeholder(task_name)),
                gr.Image(visible=True) if t.takes_image else gr.Image(value=None, visible=False))

    task.change(change_task, [task, text], [text, image], api_visibility="private")

    def on_place(task_name, text_in, image_in, mode_in, k_in):
        try:
            highlight_, desc = place_query(services, task_name, text_in, image_in, mode_in, k_in)
        except (UserError, InputError) as exc:  # a warning; the map and the last description stay
            gr.Warning(str(exc))
            return gr.skip(), gr.skip(), gr.skip()
        return highlight(**highlight_), desc, image_in

    # a search (through the micro-batcher when there is one) and numpy: in the searches' queue
    go.click(on_place, [task, text, image, mode, k], [emb_map, detail, detail_image], **services.search_concurrency,
             **{**private, "show_progress_on": detail})


def register_map_api(services: Services) -> None:
    """The `/map_place` endpoint, registered with the page itself (not inside the map tab, which is built late,
    in `gr.render`, when the map is still being built): until the map exists it answers why not."""

    def api_map_place(query_text: str, query_image: FileData | None, task_name: str, reasoning: str = "auto",
                      top_k: float = 5) -> dict:
        """Map: where a query lands on the embedding map (focus x, y), its top-k points, its direct start."""
        try:
            highlight_, desc = place_query(services, task_name, query_text,
                                           open_api_image(services, query_image, get_upload_folder()), reasoning,
                                           top_k)
        except (UserError, InputError) as exc:
            raise gr.Error(str(exc)) from exc
        return {**highlight_, "description": desc}

    gr.api(api_map_place, api_name="map_place", **services.search_concurrency)
