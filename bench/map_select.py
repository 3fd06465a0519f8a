"""The embedding map at 100k points in a browser: first draw, and a box selection until its table is filled.

The map is SYNTHETIC: 100,000 points (candidates and queries in equal proportion to a real map, each query
twice) at random coordinates drawn around 40 Gaussian blobs, labelled "synthetic item N", with random unit
vectors (for the neighbours of a click). It replaces the map of the loaded services, so the tab is the app's
own (`build_map_tab`: the same JS, props, events and handlers); the real app draws at most 20,000 candidates and
5,000 queries (`MapConfig`), so 100k is five times what TRACE-mini's app sends.

Timed in Chromium (Playwright, Debian's chromium, `--disable-gpu`: WebGL in software, as on a machine without a
GPU), from the page's own clock (`performance.now()`):
- first draw: navigation start -> the first `Plotly.react` resolved (page load, the points' JSON file fetched and
  decoded, traces built, WebGL drawn); and the map's own part (`js_on_load` start -> drawn);
- box selection: mouse up -> plotly's `plotly_selected` (plotly finds the points) -> the table and the summary
  filled (the point numbers sent to the server, the table built, the answer rendered), and -> the CSV / JSON
  exports ready (a chained event);
- a click: the event -> its 10 nearest neighbours by cosine over the 100k vectors listed in the table.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time

import numpy as np
import pandas as pd

from analysis.embedding_map import COLUMNS, EmbeddingMap, MapSample, unit_rows

SUMMARY = ".prose.trace-map-summary"
# performance.now() when the table under the map lists a box selection (the summary says so, the grid has rows).
TABLE_FILLED_JS = """() => { const s = document.querySelector('.prose.trace-map-summary');
  const g = document.querySelector('.trace-map-table [role=grid]');
  return s && s.innerText.includes('selected with the box') && g && g.offsetParent !== null &&
    Number(g.getAttribute('aria-rowcount')) > 1 ? performance.now() : false; }"""
SELECTED_COUNT_JS = """() => { const gd = document.querySelector('.trace-map-plot'); let n = 0;
  for (const t of gd.data) if (t.meta === 'base' && Array.isArray(t.selectedpoints)) n += t.selectedpoints.length;
  return n; }"""
PIXELS_JS = """([x0, y0, x1, y1]) => { const gd = document.querySelector('.trace-map-plot');
  const L = gd._fullLayout, r = gd.getBoundingClientRect();
  return [r.left + L._size.l + L.xaxis.l2p(x0), r.top + L._size.t + L.yaxis.l2p(y0),
          r.left + L._size.l + L.xaxis.l2p(x1), r.top + L._size.t + L.yaxis.l2p(y1)]; }"""


def synthetic_map(n: int = 100_000, dim: int = 32, seed: int = 0, pairs: tuple[str, ...] = ("synthetic_task0",)
                  ) -> EmbeddingMap:
    """n synthetic points: 80 % candidates, 10 % queries twice (direct, final), around 40 blobs in 2-D."""
    rng = np.random.default_rng(seed)
    n_q = n // 10
    n_c = n - 2 * n_q
    centres = rng.uniform(-20, 20, size=(40, 2))
    xy = centres[rng.integers(0, 40, n)] + rng.normal(scale=1.5, size=(n, 2))
    kind = ["candidate"] * n_c + ["query (direct)"] * n_q + ["query (final)"] * n_q
    ids = [f"syn:{i}" for i in range(n_c)] + [f"synq:{i}" for i in range(n_q)] * 2
    route = ["candidate"] * n_c + list(rng.choice(["direct", "reason"], n_q)) * 2
    hit = ["candidate"] * n_c + list(rng.choice(["hit", "miss"], 2 * n_q))
    points = pd.DataFrame({
        "point": np.arange(n), "kind": kind, "id": ids, "pair": rng.choice(list(pairs), n),
        "dataset": "synthetic", "modality": rng.choice(["text", "image"], n), "route": route, "hit": hit,
        "label": [f"synthetic item {i}" for i in range(n)], "image": None,
        "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32),
    })[COLUMNS]
    vectors = unit_rows(rng.normal(size=(n, dim)).astype(np.float32))
    return EmbeddingMap(points, f"synthetic-{n}", vectors, MapSample(n_c, n_c, n_q, n_q))


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def run(services, n: int = 100_000, loads: int = 2, selections: int = 3, timeout_s: float = 600) -> dict:
    """Serve the map tab over a synthetic n-point map and time it in Chromium (see the module docstring)."""
    import gradio as gr
    from playwright.sync_api import sync_playwright

    from app.map_tab import build_map_tab
    from app.ui import css

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {"skipped": "Debian's chromium is not installed (bash scripts/setup.sh installs it)"}
    services.map = synthetic_map(n, pairs=tuple(services.tasks))
    payload_mb = len(json.dumps(services.map.to_client(), separators=(",", ":"))) / 1e6
    t0 = time.perf_counter()
    with gr.Blocks() as demo:
        build_map_tab(services)
    build_s = time.perf_counter() - t0
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=css())
    out: dict = {"points": n, "synthetic": True, "points_json_mb": round(payload_mb, 2),
                 "tab_build_s": round(build_s, 2),
                 "browser": "chromium --disable-gpu (software WebGL)"}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(timeout_s * 1000)
            first, draw = [], []
            for _ in range(loads):
                page.goto(url, wait_until="load")
                page.wait_for_function("() => document.querySelector('.trace-map-plot')?.dataset.firstDrawAt",
                                       timeout=timeout_s * 1000)
                plot = page.locator(".trace-map-plot")
                first.append(float(plot.get_attribute("data-first-draw-at")) / 1000)
                draw.append(float(plot.get_attribute("data-first-draw-ms")) / 1000)
            out["first_draw_cold_s"] = round(first[0], 2)  # the first load: nothing cached by the browser yet
            out["first_draw_s"] = round(_median(first), 2)  # navigation start -> drawn
            out["first_draw_all_s"] = [round(x, 2) for x in first]
            out["draw_js_s"] = round(_median(draw), 2)  # js_on_load start -> drawn
            page.locator(".trace-map-plot").scroll_into_view_if_needed()
            rows = []
            rng = np.random.default_rng(1)
            pts = services.map.points
            for r in range(selections):
                if r:  # from nothing selected each time
                    page.get_by_role("button", name="Clear selection").click()
                    page.wait_for_function(f"() => document.querySelector('{SUMMARY}').innerText"
                                           ".includes('Nothing is selected')")
                cx, cy = (float(v) for v in pts[["x", "y"]].iloc[int(rng.integers(0, n))])
                px0, py0, px1, py1 = page.evaluate(PIXELS_JS, [cx - 6, cy + 6, cx + 6, cy - 6])
                page.evaluate("() => document.addEventListener('mouseup', () => { window.__mouseUpAt = "
                              "performance.now(); }, {capture: true, once: true})")
                page.mouse.move(px0, py0)
                page.mouse.down()
                page.mouse.move((px0 + px1) / 2, (py0 + py1) / 2, steps=3)
                page.mouse.move(px1, py1, steps=3)
                page.mouse.up()
                filled = page.wait_for_function(TABLE_FILLED_JS, polling="raf", timeout=timeout_s * 1000).json_value()
                up = page.evaluate("() => window.__mouseUpAt")
                selected_at = float(page.locator(".trace-map-plot").get_attribute("data-selected-at"))
                page.wait_for_function("() => !document.querySelector('#trace-map-csv')?.disabled",
                                       polling="raf", timeout=timeout_s * 1000)
                exported = page.evaluate("() => performance.now()")
                summary = page.locator(SUMMARY).inner_text()
                listed = int(summary.split(" points")[0].replace(",", ""))
                rows.append({"selected": listed, "plotly_count": page.evaluate(SELECTED_COUNT_JS),
                             "plotly_select_ms": selected_at - up, "to_table_ms": filled - selected_at,
                             "mouseup_to_table_ms": filled - up, "to_exports_ms": exported - up})
            out["selections"] = [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
            for key in ("plotly_select_ms", "to_table_ms", "mouseup_to_table_ms", "to_exports_ms"):
                out[key] = round(_median([r[key] for r in rows]), 1)
            out["counts_agree"] = all(r["selected"] == r["plotly_count"] for r in rows)
            # a click: its 10 nearest neighbours by cosine over every stored vector
            k = page.get_by_label("number input for top-k")
            k.fill("10")
            k.press("Enter")
            t = page.evaluate("() => { window.__clickAt = performance.now(); document.querySelector("
                              "'.trace-map-plot').emit('plotly_click', {points: [{customdata: 7}]}); "
                              "return window.__clickAt; }")
            done = page.wait_for_function(f"() => document.querySelector('{SUMMARY}').innerText"
                                          ".includes('nearest neighbours') ? performance.now() : false",
                                          polling="raf", timeout=timeout_s * 1000).json_value()
            out["click_neighbours_ms"] = round(done - t, 1)
            browser.close()
    finally:
        demo.close()
    return out
