"""Embedding map tab: where candidates and queries lie, and how reasoning moves a query.

The UMAP coordinates are computed once per model and pool (analysis.embedding_map, cached on disk). The
figure's points go to the browser once, as a prop of one `gr.HTML` that draws them with plotly.js; colouring
is switched in the browser. Every later event sends only a small *highlight* (the focused point, its top-k
neighbours, its gold candidates, the direct -> final path), which the browser overlays on the same figure.
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import numpy as np
import plotly
from gradio import FileData
from gradio.utils import get_upload_folder

from trace_core.records import REASONING_MODES, InputError

from . import first_visit, usecases
from .display import QUERY_IMAGE, STOP_NOTES, cap_warning
from .services import Services
from .usecases import UserError, open_api_image

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

TEMPLATE = """
<div class="trace-map">
  <div class="trace-map-bar">
    <label>Colour by <select class="trace-map-colour">
      <option value="modality">modality</option><option value="pair">task</option>
      <option value="route">route</option><option value="hit">hit or miss (R@5)</option>
    </select></label>
    <span class="trace-map-key">● candidate · ◇ query, direct embedding · ◆ query, final embedding ·
      ★ focused query · ➝ path from direct to final</span>
  </div>
  <div class="trace-map-plot" style="height: 640px;"></div>
</div>
"""

JS = r"""
const holder = element.querySelector('.trace-map-plot');
const select = element.querySelector('.trace-map-colour');
const P = props.points;
const PALETTE = ['#1d4ed8', '#f59e0b', '#059669', '#b91c1c', '#7c3aed', '#0891b2', '#db2777', '#65a30d',
                 '#ea580c', '#475569', '#0f766e', '#a16207'];
const SYMBOL = {'candidate': 'circle', 'query (direct)': 'diamond-open', 'query (final)': 'diamond'};
const SIZE = {'candidate': 5, 'query (direct)': 7, 'query (final)': 7};
const cache = {};

function base(by) {
  if (cache[by]) return cache[by];
  const cats = [...new Set(P[by])].sort();
  const colour = Object.fromEntries(cats.map((c, i) => [c, PALETTE[i % PALETTE.length]]));
  const groups = new Map();
  for (let i = 0; i < P.x.length; i++) {
    const key = P[by][i] + '\u0000' + P.kind[i];
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(i);
  }
  const shown = new Set();
  const traces = [];
  for (const [key, idx] of [...groups.entries()].sort()) {
    const [cat, kind] = key.split('\u0000');
    traces.push({
      type: 'scattergl', mode: 'markers', name: cat, legendgroup: cat, showlegend: !shown.has(cat),
      x: idx.map(i => P.x[i]), y: idx.map(i => P.y[i]), customdata: idx,
      text: idx.map(i => `${P.kind[i]} ${P.id[i]} (${P.pair[i]})<br>${P.label[i]}`),
      hovertemplate: '%{text}<extra></extra>',
      marker: {color: colour[cat], symbol: SYMBOL[kind], size: SIZE[kind],
               opacity: kind === 'candidate' ? 0.45 : 0.9},
    });
    shown.add(cat);
  }
  cache[by] = traces;
  return traces;
}

function overlay(v) {
  const out = [];
  if (!v) return out;
  const f = v.focus;
  const nb = v.neighbours || [];
  if (f && nb.length) {
    const x = [], y = [];
    for (const n of nb) { x.push(f.x, P.x[n], null); y.push(f.y, P.y[n], null); }
    out.push({type: 'scatter', mode: 'lines', x, y, name: 'top-k', hoverinfo: 'skip', showlegend: false,
              line: {color: 'rgba(30,41,59,0.45)', width: 1}});
    out.push({type: 'scatter', mode: 'markers', name: 'top-k hits', x: nb.map(n => P.x[n]), y: nb.map(n => P.y[n]),
              text: nb.map((n, r) => `#${r + 1} ${P.id[n]}<br>${P.label[n]}`), hovertemplate: '%{text}<extra></extra>',
              marker: {size: 12, color: 'rgba(0,0,0,0)', line: {color: '#1e293b', width: 2}}});
  }
  const gold = v.gold || [];
  if (gold.length) {
    out.push({type: 'scatter', mode: 'markers', name: 'gold', x: gold.map(n => P.x[n]), y: gold.map(n => P.y[n]),
              text: gold.map(n => `gold ${P.id[n]}<br>${P.label[n]}`), hovertemplate: '%{text}<extra></extra>',
              marker: {size: 16, color: 'rgba(0,0,0,0)', line: {color: '#16a34a', width: 3}}});
  }
  if (f && v.from) {
    out.push({type: 'scatter', mode: 'lines+markers', name: 'direct → final', x: [v.from.x, f.x], y: [v.from.y, f.y],
              line: {color: '#b91c1c', width: 3}, marker: {size: [9, 0], symbol: 'diamond-open', color: '#b91c1c'},
              hoverinfo: 'skip'});
  }
  if (f) {
    out.push({type: 'scatter', mode: 'markers', name: 'focus', x: [f.x], y: [f.y],
              text: [f.label || ''], hovertemplate: '%{text}<extra></extra>',
              marker: {size: 20, symbol: 'star', color: '#facc15', line: {color: '#1e293b', width: 1.5}}});
  }
  return out;
}

function annotations(v) {
  if (!v || !v.focus || !v.from) return [];
  return [{x: v.focus.x, y: v.focus.y, ax: v.from.x, ay: v.from.y, xref: 'x', yref: 'y', axref: 'x', ayref: 'y',
           showarrow: true, arrowhead: 3, arrowsize: 1.5, arrowwidth: 2.5, arrowcolor: '#b91c1c', text: ''}];
}

function draw() {
  const layout = {margin: {l: 10, r: 10, t: 10, b: 10}, hovermode: 'closest', dragmode: 'pan',
                  xaxis: {visible: false}, yaxis: {visible: false},
                  legend: {orientation: 'h', y: -0.02}, annotations: annotations(props.value),
                  uirevision: 'keep-zoom'};
  Plotly.react(holder, [...base(select.value), ...overlay(props.value)], layout,
               {responsive: true, displaylogo: false, scrollZoom: true});
}

draw();
holder.on('plotly_click', (ev) => {
  const pt = ev.points && ev.points[0];
  if (!pt || pt.customdata === undefined || pt.customdata === null) return;
  props.value = Object.assign({}, props.value || {}, {picked: pt.customdata});
  trigger('click');
});
select.addEventListener('change', draw);
watch('value', draw);
new ResizeObserver(() => { if (holder.offsetWidth) Plotly.Plots.resize(holder); }).observe(holder);
"""


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


def build_map_tab(services: Services) -> None:
    emap = services.map
    if emap is None:
        gr.Markdown("No embedding map was built in this session (the app was started with `--no-map`).")
        return
    gr.set_static_paths([PLOTLY_JS])
    counts = emap.points["kind"].value_counts()
    gr.Markdown(
        f"UMAP of **{counts.get('candidate', 0)} candidates** and **{counts.get('query (final)', 0)} benchmark "
        "queries**, each query twice: its direct embedding (◇, the state before `<|emb|>` at the first step) and "
        "its final one (◆, after the chain of thought when it reasoned). Computed once and cached. A new query is "
        "placed from its nearest candidates, not re-projected. Click a point to see the item; a reasoned query "
        "shows its path from direct to final."
    )
    tasks = services.tasks
    first = first_visit.default_task(services)  # a task that takes a typed query

    def placeholder(task_name: str) -> str:
        ex = next((e for e in first_visit.example_queries(services, task_name, 4) if e.text), None)
        return f"e.g. {ex.text}" if ex else ""

    with gr.Row():
        with gr.Column(scale=3):
            emb_map = gr.HTML({}, html_template=TEMPLATE, js_on_load=JS, points=emap.to_client(),
                              head=f'<script src="gradio_api/file={PLOTLY_JS}"></script>', elem_id="trace-map")
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

    def on_pick(value):
        return pick(services, value)

    emb_map.click(on_pick, emb_map, [emb_map, detail, detail_image], concurrency_limit=4,
                  api_visibility="private")

    def change_task(task_name: str, text_in: str | None):
        t = tasks[task_name]  # the inputs it does not take are cleared and hidden
        return (gr.Textbox(value=text_in if t.takes_text else "", visible=t.takes_text,
                           placeholder=placeholder(task_name)),
                gr.Image(visible=True) if t.takes_image else gr.Image(value=None, visible=False))

    task.change(change_task, [task, text], [text, image], api_visibility="private")

    def on_place(task_name, text_in, image_in, mode_in, k_in):
        try:
            highlight, desc = place_query(services, task_name, text_in, image_in, mode_in, k_in)
        except (UserError, InputError) as exc:  # a warning; the map and the last description stay
            gr.Warning(str(exc))
            return gr.skip(), gr.skip(), gr.skip()
        return highlight, desc, image_in

    go.click(on_place, [task, text, image, mode, k], [emb_map, detail, detail_image], concurrency_limit=1,
             concurrency_id="model", api_visibility="private")

    def api_map_place(query_text: str, query_image: FileData | None, task_name: str, reasoning: str = "auto",
                      top_k: float = 5) -> dict:
        """Map: where a query lands on the embedding map (focus x, y), its top-k points, its direct start."""
        try:
            highlight, desc = place_query(services, task_name, query_text,
                                          open_api_image(services, query_image, get_upload_folder()), reasoning, top_k)
        except (UserError, InputError) as exc:
            raise gr.Error(str(exc)) from exc
        return {**highlight, "description": desc}

    gr.api(api_map_place, api_name="map_place", concurrency_limit=1, concurrency_id="model")
