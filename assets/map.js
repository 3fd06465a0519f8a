// The embedding map (app/map_tab.py): the body of a gr.HTML `js_on_load`, run with `element`, `props`, `trigger`
// and `watch`. The points are fetched once, as a static JSON file (`props.points_url`), not passed as a prop:
// Gradio compares and proxies a component's props on every update, which at 100k points costs seconds.
// `props.value` is the small highlight Python sends (the focused point, its path and neighbours, the points a
// search, a click or the error table lit up). A box or lasso selection is kept here and only its point numbers
// go to Python (`trigger('select', {points})`), which answers with the table and the gallery.
const holder = element.querySelector('.trace-map-plot');
const colourBy = element.querySelector('.trace-map-colour');
const dragBy = element.querySelector('.trace-map-drag');
const started = performance.now();
let P = null;  // the points, once fetched: columns x, y, id, label, kind, pair, dataset, modality, route, hit
let N = 0;

// The categorical columns come as codes (a fifth of the bytes at 100k points).
function decode(raw) {
  const out = {x: raw.x, y: raw.y, id: raw.id, label: raw.label};
  for (const c of ['kind', 'pair', 'dataset', 'modality', 'route', 'hit']) {
    const col = raw[c];
    out[c] = col.codes.map(i => col.cats[i]);
  }
  return out;
}

const PALETTE = ['#1d4ed8', '#f59e0b', '#059669', '#b91c1c', '#7c3aed', '#0891b2', '#db2777', '#65a30d',
                 '#ea580c', '#475569', '#0f766e', '#a16207'];
const SYMBOL = {'candidate': 'circle', 'query (direct)': 'diamond-open', 'query (final)': 'diamond'};
const SIZE = {'candidate': 5, 'query (direct)': 7, 'query (final)': 7};
const DIM = 0.08;  // points outside a selection stay visible, faint: the context of what is lit
const cache = {};
let chosen = null;  // point numbers of this page's box / lasso selection, until Python sends a new highlight
let selectionRevision = 0;  // a new highlight from Python drops plotly's own (user-driven) selection state
let drawing = false;  // while our own redraw runs: the (de)select events it may cause are not the person's

function base(by) {
  if (cache[by]) return cache[by];
  const cats = [...new Set(P[by])].sort();
  const colour = Object.fromEntries(cats.map((c, i) => [c, PALETTE[i % PALETTE.length]]));
  const groups = new Map();
  for (let i = 0; i < N; i++) {
    const key = P[by][i] + '\u0000' + P.kind[i];
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(i);
  }
  const shown = new Set();
  const traces = [];
  for (const [key, idx] of [...groups.entries()].sort()) {
    const [cat, kind] = key.split('\u0000');
    traces.push({
      type: 'scattergl', mode: 'markers', name: cat, legendgroup: cat, showlegend: !shown.has(cat), meta: 'base',
      x: idx.map(i => P.x[i]), y: idx.map(i => P.y[i]), customdata: idx,
      text: idx.map(i => `${P.kind[i]} ${P.id[i]} (${P.pair[i]})<br>${P.label[i]}`),
      hovertemplate: '%{text}<extra></extra>',
      marker: {color: colour[cat], symbol: SYMBOL[kind], size: SIZE[kind],
               opacity: kind === 'candidate' ? 0.45 : 0.9},
      selected: {marker: {opacity: 1}}, unselected: {marker: {opacity: DIM}},
    });
    shown.add(cat);
  }
  cache[by] = traces;
  return traces;
}

function lit() {
  if (chosen) return chosen;
  const v = props.value;
  return v && Array.isArray(v.lit) ? v.lit : null;
}

// The base traces with the lit points selected (plotly draws the others at the `unselected` opacity).
function dimmed(traces, points) {
  if (!points) return traces.map(t => Object.assign({}, t, {selectedpoints: null}));
  const on = new Uint8Array(N);
  for (const i of points) on[i] = 1;
  return traces.map(t => {
    const sp = [];
    const cd = t.customdata;
    for (let j = 0; j < cd.length; j++) if (on[cd[j]]) sp.push(j);
    return Object.assign({}, t, {selectedpoints: sp});
  });
}

function ring(idx, name, colour, size, rank) {
  return {type: 'scattergl', mode: 'markers', name, x: idx.map(n => P.x[n]), y: idx.map(n => P.y[n]),
          text: idx.map((n, r) => `${rank ? '#' + (r + 1) + ' ' : ''}${P.kind[n]} ${P.id[n]}<br>${P.label[n]}`),
          hovertemplate: '%{text}<extra></extra>',
          marker: {size, symbol: 'circle-open', color: colour, line: {color: colour, width: 2}}};
}

function overlay(v) {
  const out = [];
  if (!v) return out;
  if (!chosen && Array.isArray(v.lit) && v.lit.length) {
    out.push(ring(v.lit, v.lit_name || 'lit', '#ea580c', 13, v.ranked));
  }
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
  if (!P) return Promise.resolve();  // the points are still on their way; drawn when they arrive
  const v = props.value || {};
  const traces = dimmed(base(colourBy.value), lit());
  const layout = {margin: {l: 10, r: 10, t: 10, b: 10}, hovermode: 'closest', dragmode: dragBy.value,
                  xaxis: {visible: false}, yaxis: {visible: false},
                  legend: {orientation: 'h', y: -0.02}, annotations: annotations(v), uirevision: 'keep-zoom',
                  selectionrevision: selectionRevision};
  if (!chosen) layout.selections = [];  // a highlight from Python replaces the box / lasso outline
  drawing = true;
  const done = () => { drawing = false; };
  return Plotly.react(holder, [...traces, ...overlay(v)], layout,
                      {responsive: true, displaylogo: false, scrollZoom: true, displayModeBar: true,
                       toImageButtonOptions: {format: 'png', filename: 'trace-embedding-map'}})
    .then(done, (err) => { done(); throw err; });
}

function baseCount() {
  return (holder.data || []).filter(t => t.meta === 'base').length;
}

// The plot's events, once plotly.js has made the plot (it adds `.on` to the element).
function listen() {
  holder.on('plotly_click', (ev) => {
    const pt = ev && ev.points && ev.points[0];
    if (!pt || typeof pt.customdata !== 'number') return;
    trigger('click', {point: pt.customdata});
  });
  holder.on('plotly_selected', (ev) => {
    if (!ev || drawing) return;  // a click that selected nothing new, or our redraw re-applying a selection
    // The points plotly drew as selected (the traces' `selectedpoints`): its event's list can miss a point on
    // the edge of the box at 100k points, and the table must list what the map shows.
    const picked = new Set();
    let marked = false;
    for (const t of holder.data) {
      if (t.meta !== 'base' || !Array.isArray(t.selectedpoints)) continue;
      marked = true;
      for (const j of t.selectedpoints) picked.add(t.customdata[j]);
    }
    if (!marked) {
      const nBase = baseCount();
      for (const pt of ev.points || []) {
        if (pt.curveNumber < nBase && typeof pt.customdata === 'number') picked.add(pt.customdata);
      }
    }
    chosen = [...picked].sort((a, b) => a - b);
    holder.dataset.selectedAt = performance.now().toFixed(1);
    trigger('select', {points: chosen});
  });
  holder.on('plotly_deselect', () => {  // a double click: the person drops the selection or the lit points
    if (drawing) return;
    const v = props.value || {};
    if (chosen === null && !(Array.isArray(v.lit) && v.lit.length)) return;
    chosen = null;
    trigger('select', {points: [], cleared: true});
  });
}

for (const format of ['png', 'svg']) {
  element.querySelector(`.trace-map-${format}`).addEventListener('click', () => {
    Plotly.downloadImage(holder, {format, filename: 'trace-embedding-map', width: holder.offsetWidth,
                                  height: holder.offsetHeight});
  });
}
colourBy.addEventListener('change', draw);
dragBy.addEventListener('change', () => { if (P) Plotly.relayout(holder, {dragmode: dragBy.value}); });
watch('value', () => { chosen = null; selectionRevision += 1; draw(); });
new ResizeObserver(() => { if (P && holder.offsetWidth) Plotly.Plots.resize(holder); }).observe(holder);

fetch(props.points_url).then(r => {
  if (!r.ok) throw new Error(`the map's points could not be loaded (HTTP ${r.status})`);
  return r.json();
}).then(raw => {
  P = decode(raw);
  N = P.x.length;
  return draw().then(() => {
    listen();
    // when the first draw was done, for bench/map_select.py and the tests
    holder.dataset.firstDrawMs = (performance.now() - started).toFixed(1);
    holder.dataset.firstDrawAt = performance.now().toFixed(1);
  });
}).catch(err => {
  holder.textContent = String(err.message || err);
  console.error(err);
});
