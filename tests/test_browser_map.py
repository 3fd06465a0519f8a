"""The embedding map as a linked, searchable map, in a real browser (Playwright driving Debian's Chromium)
against the launched app on a tiny model.

A box dragged with the mouse over the plot lists exactly the points inside it in the table and their images
in the gallery, the others drawn dimmed; a search and a click light up the points `app.map_tab` computes in
embedding space; the exports download every lit point; the error table and the map send each other their
queries. Expected rows come from the app's own functions and the map's coordinates, not from the page.
`scripts/setup.sh` installs Chromium; without it the tests are skipped, unless TRACE_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import json
import os
import re

import pandas as pd
import pytest

from tests.app_fixture import build_services
from tests.browser_fixture import CHROMIUM, chromium, open_page, serve

sync_api = pytest.importorskip("playwright.sync_api")
if CHROMIUM is None and os.environ.get("TRACE_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed (bash scripts/setup.sh installs it)", allow_module_level=True)

# The point numbers plotly.js holds as selected, over the map's own traces (customdata = point number).
SELECTED_JS = """() => { const gd = document.querySelector('.trace-map-plot'); const out = [];
  for (const t of gd.data) if (t.meta === 'base' && Array.isArray(t.selectedpoints))
    for (const j of t.selectedpoints) out.push(t.customdata[j]);
  return out.sort((a, b) => a - b); }"""
# How the map's own traces are drawn: marker opacity, opacity of unselected points, whether a selection is on.
OPACITY_JS = """() => [...document.querySelector('.trace-map-plot').data].filter(t => t.meta === 'base')
  .map(t => ({marker: t.marker.opacity, unselected: t.unselected.marker.opacity,
              selecting: Array.isArray(t.selectedpoints)}))"""
# Data coordinates -> page pixels, through plotly's own axes, kept 3 px inside the plotting area (a drag that
# starts outside it selects the page's text instead).
PIXELS_JS = """([x0, y0, x1, y1]) => { const gd = document.querySelector('.trace-map-plot');
  const L = gd._fullLayout, r = gd.getBoundingClientRect(), s = L._size;
  const px = v => Math.min(Math.max(L.xaxis.l2p(v), 3), s.w - 3) + r.left + s.l;
  const py = v => Math.min(Math.max(L.yaxis.l2p(v), 3), s.h - 3) + r.top + s.t;
  return [px(x0), py(y0), px(x1), py(y1)]; }"""
# Page pixels -> data coordinates (what the drawn box covers).
DATA_JS = """([px0, py0, px1, py1]) => { const gd = document.querySelector('.trace-map-plot');
  const L = gd._fullLayout, r = gd.getBoundingClientRect();
  return [L.xaxis.p2l(px0 - r.left - L._size.l), L.yaxis.p2l(py0 - r.top - L._size.t),
          L.xaxis.p2l(px1 - r.left - L._size.l), L.yaxis.p2l(py1 - r.top - L._size.t)]; }"""


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    return build_services(tmp_path_factory.mktemp("browser-map"), with_map=True)


@pytest.fixture(scope="module")
def app_url(services):
    with serve(services) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    with chromium() as browser:
        # a deep link to the map: the page's load event, which selects the tab a link names, keeps it there
        page = open_page(browser, app_url.rstrip("/") + "/?tab=map", accept_downloads=True)
        sync_api.expect(page.get_by_role("tab", name="Embedding map", exact=True)).to_be_visible()
        yield page


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _open_map(page) -> None:
    plot = page.locator(".trace-map-plot")
    for _ in range(5):  # the page restores its view on load and may switch tabs once, just after the first click
        _tab(page, "Embedding map")
        try:
            sync_api.expect(plot).to_be_visible(timeout=10_000)
            break
        except AssertionError:
            continue
    sync_api.expect(plot).to_have_attribute("data-first-draw-ms", re.compile(r"\d"), timeout=60_000)
    plot.scroll_into_view_if_needed()


def _grid_column(page, grid, col: int) -> list[str]:
    """One column of a Gradio table (its [role=grid] locator), row by row. The table draws only the rows in
    view, so it is scrolled through."""
    if not grid.count() or not grid.is_visible():  # a hidden table: nothing listed
        return []
    grid.scroll_into_view_if_needed()
    count = int(grid.get_attribute("aria-rowcount")) - 1
    seen: dict[int, str] = {}
    for step in range(100):
        cells = grid.evaluate("""(grid, [col, step]) => {
            const block = grid.closest('.block');
            let e = grid.querySelector('.virtual-body');
            while (e && e !== block && !(e.scrollHeight > e.clientHeight + 1 &&
                                         getComputedStyle(e).overflowY !== 'visible')) e = e.parentElement;
            if (e && e !== block) e.scrollTop = step * e.clientHeight / 2;
            return [...grid.querySelectorAll(`[data-col="${col}"][data-row]`)]
                .map(c => [Number(c.dataset.row), c.innerText.trim()]); }""", [col, step])
        page.wait_for_timeout(100)
        seen.update(dict(cells))
        if len(seen) >= count:
            break
    return [seen[r] for r in sorted(seen)]


def _table_column(page, col: int = 0) -> list[str]:
    """One column of the table under the map."""
    if not page.locator(".trace-map-plot").is_visible():  # a table in a hidden tab draws no rows
        _open_map(page)
    return _grid_column(page, page.locator(".trace-map-table [role=grid]"), col)


def _table_points(page) -> list[int]:
    """The `point` column of the table under the map."""
    return [int(c) for c in _table_column(page, 0)]


def _summary(page):
    return page.locator(".prose.trace-map-summary")


def _wait_rows(page, n: int) -> None:
    """Until the table under the map holds n rows."""
    sync_api.expect(page.locator(".trace-map-table [role=grid]")).to_have_attribute("aria-rowcount", str(n + 1),
                                                                                  timeout=60_000)


def _clear(page) -> None:
    page.get_by_role("button", name="Clear selection").click()
    sync_api.expect(_summary(page)).to_contain_text("Nothing is selected")


def _drag_box(page, services, centre: int, half: float) -> tuple[list[float], list[int]]:
    """Drag a box with the mouse around map point `centre` (half-width `half` of the data range); returns the
    box in data coordinates (x0, y0, x1, y1) and the points inside it by the map's own coordinates."""
    page.locator(".trace-map-plot").scroll_into_view_if_needed()  # the mouse acts on what is in view
    pts = services.map.points
    span = max(float(pts["x"].max() - pts["x"].min()), float(pts["y"].max() - pts["y"].min()))
    cx, cy = float(pts["x"].iloc[centre]), float(pts["y"].iloc[centre])
    px0, py0, px1, py1 = page.evaluate(PIXELS_JS, [cx - half * span, cy + half * span, cx + half * span,
                                                   cy - half * span])
    page.mouse.move(px0, py0)
    page.mouse.down()
    page.mouse.move((px0 + px1) / 2, (py0 + py1) / 2, steps=4)
    page.mouse.move(px1, py1, steps=4)
    page.mouse.up()
    x0, y0, x1, y1 = page.evaluate(DATA_JS, [px0, py0, px1, py1])
    lo_x, hi_x, lo_y, hi_y = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    client = services.map.to_client()  # the coordinates the page draws (rounded to 1e-3)
    inside = [n for n, (x, y) in enumerate(zip(client["x"], client["y"], strict=True))
              if lo_x <= x <= hi_x and lo_y <= y <= hi_y]
    return [lo_x, lo_y, hi_x, hi_y], inside


def test_a_box_selection_lists_its_points_shows_their_images_and_dims_the_rest(page, services):
    _open_map(page)
    pts = services.map.points
    centre = int(pts.index[(pts["kind"] == "candidate") & pts["image"].notna()][0])  # an image candidate
    box, inside = _drag_box(page, services, centre, 0.2)
    assert centre in inside
    _wait_rows(page, min(len(inside), 200))
    selected = page.evaluate(SELECTED_JS)
    assert selected == inside, (box, selected, inside)  # plotly's selection is the box, by the map's coordinates
    assert _table_points(page) == inside[:200]  # the table lists exactly those points, built by the server
    sync_api.expect(_summary(page)).to_contain_text(f"{len(inside)} points selected with the box or lasso")
    # their images: the image candidates inside the box
    with_image = [n for n in inside if isinstance(pts["image"].iloc[n], str)]
    sync_api.expect(page.locator(".trace-map-gallery .thumbnail-item")).to_have_count(min(len(with_image), 24))
    # the others stay on the map, dimmed: every trace of the map is in selection mode with faint unselected points
    traces = page.evaluate(OPACITY_JS)
    assert traces and all(t["selecting"] for t in traces)
    assert all(0 < t["unselected"] < t["marker"] for t in traces), traces
    _clear(page)
    assert _table_points(page) == []
    assert not any(t["selecting"] for t in page.evaluate(OPACITY_JS))  # nothing dimmed any more
    sync_api.expect(page.locator(".trace-map-gallery .thumbnail-item")).to_have_count(0)
    assert not page.page_errors, page.page_errors


def test_a_box_over_empty_space_says_so(page, services):
    _open_map(page)
    client = services.map.to_client()
    # a 30-px square in a corner of the plotting area that holds no point (plotly pads the axes' ranges)
    corners = page.evaluate("""() => { const gd = document.querySelector('.trace-map-plot');
        const L = gd._fullLayout, r = gd.getBoundingClientRect(), s = L._size;
        const x0 = r.left + s.l + 4, y0 = r.top + s.t + 4, x1 = r.left + s.l + s.w - 34, y1 = r.top + s.t + s.h - 34;
        return [[x0, y0], [x1, y0], [x0, y1], [x1, y1]].map(([x, y]) => [x, y, x + 30, y + 30]); }""")
    for px0, py0, px1, py1 in corners:
        x0, y0, x1, y1 = page.evaluate(DATA_JS, [px0, py0, px1, py1])
        if not any(min(x0, x1) <= x <= max(x0, x1) and min(y0, y1) <= y <= max(y0, y1)
                   for x, y in zip(client["x"], client["y"], strict=True)):
            break
    else:
        pytest.skip("every corner of this map holds a point")
    page.mouse.move(px0, py0)
    page.mouse.down()
    page.mouse.move(px1, py1, steps=6)
    page.mouse.up()
    sync_api.expect(page.locator(".toast-body").filter(has_text="holds no point").first).to_be_visible(
        timeout=60_000)
    assert _table_points(page) == []


def test_a_search_lights_up_the_nearest_items_and_lists_them(page, services):
    from app.first_visit import default_task
    from app.map_tab import search_map

    _open_map(page)
    task = default_task(services)  # the map tab's task on a first visit: one with text queries
    assert services.tasks[task].query_modality == "text"
    expected = search_map(services, task, "who painted it?", 5)
    page.get_by_label("Search the map").fill("who painted it?")
    page.get_by_role("button", name="Search the map").click()
    _wait_rows(page, len(expected.points))
    assert _table_points(page) == expected.points  # ranked by cosine, computed by the server
    sync_api.expect(_summary(page)).to_contain_text("nearest to “who painted it?”")
    sync_api.expect(page.locator(".trace-map-plot .legendtext", has_text="search matches")).to_have_count(1)
    assert page.evaluate(SELECTED_JS) == sorted(expected.points)  # lit, the others dimmed
    # an empty search is a warning, and the matches stay
    page.get_by_label("Search the map").fill("   ")
    page.get_by_role("button", name="Search the map").click()
    sync_api.expect(page.locator(".toast-body").filter(has_text="Type something").first).to_be_visible()
    assert _table_points(page) == expected.points
    assert not page.page_errors, page.page_errors


def test_a_clicked_point_shows_its_nearest_neighbours_in_embedding_space(page, services):
    from app.map_tab import neighbours_lit

    _open_map(page)
    n = services.map.candidate_point(services.tasks["webqa_task1"].index.ids[0])
    expected = neighbours_lit(services, n, 5)
    # the event plotly.js emits on a click on that point
    page.evaluate(f"document.querySelector('.trace-map-plot').emit('plotly_click', {{points: [{{customdata: {n}}}]}})")
    _wait_rows(page, len(expected.points))
    assert _table_points(page) == expected.points  # the point, then its neighbours by cosine
    sync_api.expect(_summary(page)).to_contain_text("nearest neighbours in embedding space")
    sync_api.expect(page.locator(".trace-map-plot .legendtext", has_text="nearest (cosine)")).to_have_count(1)
    sync_api.expect(page.locator(".trace-map-plot .legendtext", has_text="focus")).to_have_count(1)
    sims = _table_column(page, 8)  # the similarity column
    assert [float(s) for s in sims] == pytest.approx(expected.similarity, abs=1e-4)
    assert not page.page_errors, page.page_errors


def test_exports_download_every_lit_point_and_the_figure(page, services, tmp_path):
    _open_map(page)
    _clear(page)
    pts = services.map.points
    _, inside = _drag_box(page, services, int(len(pts) // 2), 0.25)
    _wait_rows(page, min(len(inside), 200))
    csv_button = page.locator("#trace-map-csv")
    sync_api.expect(csv_button).to_be_enabled()
    with page.expect_download() as got:
        csv_button.click()
    rows = pd.read_csv(got.value.path())
    assert rows["point"].tolist() == inside
    assert list(rows.columns[:10]) == ["point", "id", "x", "y", "kind", "pair", "label", "route", "gold rank", "hit"]
    assert rows["id"].astype(str).tolist() == pts["id"].iloc[inside].astype(str).tolist()
    with page.expect_download() as got:
        page.locator("#trace-map-json").click()
    doc = json.loads(open(got.value.path(), encoding="utf-8").read())
    assert [r["point"] for r in doc["rows"]] == inside and doc["about"]["map"] == services.map.fingerprint
    # the figure's data, and the figure itself as SVG (plotly.js renders it in the page)
    with page.expect_download() as got:
        page.locator("#trace-map-data").click()
    assert len(pd.read_csv(got.value.path())) == len(pts)
    with page.expect_download() as got:
        page.locator(".trace-map-svg").click()
    assert got.value.suggested_filename.endswith(".svg")
    assert "<svg" in open(got.value.path(), encoding="utf-8").read(2000)
    assert not page.page_errors, page.page_errors


def test_the_error_table_and_the_map_send_each_other_their_queries(page, services):
    from app.errors_tab import listing

    _tab(page, "Error inspection")
    page.get_by_label("Show").locator("visible=true").first.click()
    page.get_by_role("option", name="reasoning hurt", exact=True).click()
    shown = listing(services, "reasoning hurt", "all", 5)
    if shown.empty:  # the tiny random model may hurt no query; then all of them
        page.get_by_label("Show").locator("visible=true").first.click()
        page.get_by_role("option", name="all", exact=True).click()
        shown = listing(services, "all", "all", 5)
    page.get_by_role("button", name="Show these on the map").click()
    sync_api.expect(page.locator(".toast-body").filter(has_text="lit on the Embedding map").first).to_be_visible()
    emap = services.map
    expected = sorted(emap.query_point(p, q, kind) for p, q in zip(shown["pair"], shown["qid"], strict=True)
                      for kind in ("query (direct)", "query (final)"))
    _open_map(page)
    _wait_rows(page, min(len(expected), 200))
    assert _table_points(page) == expected[:200]
    sync_api.expect(page.locator(".trace-map-plot .legendtext", has_text="error table")).to_have_count(1)
    # and back: a box around one query filters the error table to the queries inside it
    q = expected[0]
    _, inside = _drag_box(page, services, q, 0.05)
    _wait_rows(page, min(len(inside), 200))
    keys = {(emap.points["pair"].iloc[n], emap.points["id"].iloc[n]) for n in inside
            if emap.points["kind"].iloc[n] != "candidate"}
    page.get_by_role("button", name="Filter the error table to this selection").click()
    sync_api.expect(page.locator(".toast-body").filter(has_text="now lists only").first).to_be_visible()
    _tab(page, "Error inspection")
    sync_api.expect(page.get_by_text(re.compile(rf"among the {len(keys)} queries selected on the embedding map"))
                    ).to_be_visible()
    view = page.get_by_label("Show").locator("visible=true").first.input_value()  # the view chosen above
    filtered = listing(services, view, "all", 5, {"keys": [list(k) for k in keys]})
    grid = page.locator('[role=grid][aria-label="Queries"]')
    sync_api.expect(grid).to_have_attribute("aria-rowcount", str(len(filtered) + 1))
    assert sorted(_grid_column(page, grid, 1)) == sorted(filtered["qid"].astype(str))  # the qid column
    page.get_by_role("button", name=re.compile("Show every query again")).click()
    sync_api.expect(page.get_by_text(re.compile("selected on the embedding map"))).to_have_count(0)
    assert not page.page_errors, page.page_errors
