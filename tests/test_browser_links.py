"""Deep links, figure downloads and the Walkthrough's edited chain of thought, in a real browser (Playwright
driving Debian's Chromium) against the launched app on a tiny model.

A link opens its tab with its query filled in and run; a bad link is a warning and the app keeps working; the
link in the box follows the view. A figure downloads as CSV (the rows it is drawn from), SVG and PNG (drawn by
plotly.js in the page). In the Walkthrough, a chain of thought edited by hand re-embeds the query and the
gold's rank before and after is shown. Oracles: the use cases called directly on the same services.
`scripts/setup.sh` installs Chromium; without it the test is skipped, unless TRACE_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import io
import os
import re

import pandas as pd
import pytest

from tests.app_fixture import build_services
from tests.browser_fixture import CHROMIUM, chromium, serve

sync_api = pytest.importorskip("playwright.sync_api")
if CHROMIUM is None and os.environ.get("TRACE_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed (bash scripts/setup.sh installs it)", allow_module_level=True)

expect = sync_api.expect
expect.set_options(timeout=30_000)  # the page's load event runs the link; a loaded 2-core machine is slow


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    return build_services(tmp_path_factory.mktemp("browser-links"))


@pytest.fixture(scope="module")
def app_url(services):
    with serve(services) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.page_errors = []
    page.on("pageerror", lambda exc: page.page_errors.append(str(exc)))
    page.set_default_timeout(60_000)  # a loaded 2-core machine renders slowly
    yield page
    page.close()


def _open(page, app_url: str, query: str = "") -> None:
    page.goto(app_url + ("?" + query if query else ""), wait_until="load")
    expect(page.get_by_role("tab", name="Search", exact=True)).to_be_visible()


def _selected(page, name: str):
    return page.get_by_role("tab", name=name, exact=True)


def _link_box(page):
    return page.locator("#view-link textarea, #view-link input").first


def _params(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))


def _download(page, click) -> tuple[str, bytes]:
    with page.expect_download() as info:
        click()
    d = info.value
    with open(d.path(), "rb") as fh:
        return d.suggested_filename, fh.read()


# ------------------------------------------------------------------------------------------ deep links
def test_a_search_link_opens_the_tab_fills_the_inputs_and_shows_the_results(page, app_url, services):
    from app.first_visit import example_queries
    from app.links import View, instruction_for, view_query
    from app.usecases import search

    task = "mscoco_task0"
    t = services.tasks[task]
    q = t.queries[1]
    instruction = instruction_for(example_queries(services, task, 4), t.instructions[0], q.qid)
    want = search(services, task, q.text, None, instruction, "never", 10, q.qid, routing_bias=1.5)
    _open(page, app_url, view_query(View("search", task, "", q.qid, "never", 1.5)))
    panel = page.locator("#search-panel")
    expect(_selected(page, "Search")).to_have_attribute("aria-selected", "true")
    expect(panel.get_by_label("Task", exact=True)).to_have_value(re.compile(task))
    expect(panel.get_by_label("Query text")).to_have_value(q.text)
    expect(panel.get_by_label("never", exact=True)).to_be_checked()
    expect(panel.get_by_label("number input for Routing bias")).to_have_value("1.5")
    # the search ran by itself: the route, the gold where the use case puts it, the ranking
    expect(panel.locator(".route-badge")).to_contain_text("you turned reasoning off (never)", timeout=60_000)
    expect(panel.get_by_text(re.compile(rf"is at rank {want.gold_rank} "))).to_be_visible()
    rows = panel.locator(".fit-table").first.get_by_role("row")
    expect(rows).to_have_count(len(want.hits) + 1)
    expect(rows.nth(1)).to_contain_text(want.hits[0].did)
    # the link box holds the same view
    expect(_link_box(page)).to_have_value(re.compile(r"tab=search"))
    assert _params(_link_box(page).input_value()) == {"tab": "search", "task": task, "qid": q.qid, "mode": "never",
                                                     "bias": "1.5"}
    assert not page.page_errors, page.page_errors


def test_a_walkthrough_link_walks_its_example_through(page, app_url, services):
    from app.links import View, view_query

    task = "webqa_task1"
    q = services.tasks[task].queries[0]
    _open(page, app_url, view_query(View("walkthrough", task, "", q.qid, "always")))
    expect(_selected(page, "Walkthrough")).to_have_attribute("aria-selected", "true")
    panel = page.locator("#walkthrough-panel")
    expect(panel.get_by_label("Query text")).to_have_value(q.text)
    expect(panel.get_by_label("always", exact=True)).to_be_checked()
    expect(panel.get_by_text(f"This is benchmark query {q.qid}")).to_be_visible(timeout=60_000)
    expect(panel.get_by_text("Reasoning is forced (always)").first).to_be_visible()
    expect(_link_box(page)).to_have_value(re.compile(r"tab=walkthrough"))
    assert _params(_link_box(page).input_value())["qid"] == q.qid


def test_a_bad_link_is_a_warning_and_the_app_keeps_working(page, app_url, services):
    from app.first_visit import default_task

    _open(page, app_url, "tab=search&task=nope_task9&q=a%20dog%20on%20a%20sofa&mode=sometimes&bias=lots&__theme=light")
    toasts = page.locator(".toast-body")
    expect(toasts.filter(has_text="task 'nope_task9' that does not exist").first).to_be_visible()
    expect(toasts.filter(has_text="mode 'sometimes' does not exist").first).to_be_visible()
    expect(toasts.filter(has_text="bias 'lots' is not a number").first).to_be_visible()
    panel = page.locator("#search-panel")
    first = default_task(services)
    expect(panel.get_by_label("Task", exact=True)).to_have_value(re.compile(first))
    expect(panel.get_by_label("Query text")).to_have_value("a dog on a sofa")
    expect(panel.get_by_label("auto", exact=True)).to_be_checked()
    # what was right ran: the query on the default task
    expect(panel.locator(".route-badge")).not_to_contain_text("no query yet", timeout=60_000)
    expect(panel.locator(".route-badge")).not_to_contain_text("thinking", timeout=60_000)
    assert panel.locator(".fit-table").first.get_by_role("row").count() > 1
    # the link is the corrected view; Gradio's own parameter stays
    expect(_link_box(page)).to_have_value(re.compile(rf"task={first}"))
    params = _params(_link_box(page).input_value())
    assert params["task"] == first and "mode" not in params and "bias" not in params
    assert params["__theme"] == "light"
    # and the app works on: another search from the inputs
    panel.get_by_label("Query text").fill("who painted the picture?")
    panel.get_by_label("never", exact=True).check()
    panel.get_by_role("button", name="Search", exact=True).click()
    expect(panel.locator(".route-badge")).to_contain_text("you turned reasoning off (never)", timeout=60_000)
    assert not page.locator(".error").filter(has_text="Error").count()
    assert not page.page_errors, page.page_errors


def test_the_link_follows_the_view_and_opens_it_again(page, app_url):
    _open(page, app_url)
    panel = page.locator("#search-panel")
    panel.get_by_label("Query text").fill("a red kite")
    expect(_link_box(page)).to_have_value(re.compile(r"q=a(\+|%20)red(\+|%20)kite"))  # the browser writes "+"
    panel.get_by_label("always", exact=True).check()
    expect(_link_box(page)).to_have_value(re.compile(r"mode=always"))
    search_link = _link_box(page).input_value()
    assert _params(search_link) == {"tab": "search", "task": _params(search_link)["task"], "q": "a red kite",
                                    "mode": "always"}
    page.get_by_role("tab", name="Benchmark", exact=True).click()
    expect(_link_box(page)).to_have_value(re.compile(r"\?tab=benchmark$"))
    benchmark_link = _link_box(page).input_value()
    expect(page.get_by_text("An image you uploaded is not").first).to_be_visible()  # said beside the link
    # each link opens its view again in a fresh page
    page.goto(benchmark_link, wait_until="load")
    expect(_selected(page, "Benchmark")).to_have_attribute("aria-selected", "true")
    page.goto(search_link, wait_until="load")
    expect(_selected(page, "Search")).to_have_attribute("aria-selected", "true")
    expect(panel.get_by_label("Query text")).to_have_value("a red kite")
    expect(panel.locator(".route-badge")).to_contain_text("you forced reasoning (always)", timeout=60_000)
    assert not page.page_errors, page.page_errors


# ------------------------------------------------------------------------------------------ figure downloads
def test_a_figure_downloads_its_data_as_csv_and_its_image_as_svg_and_png(page, app_url, services):
    from analysis.difficulty import by_band

    _open(page, app_url, "tab=difficulty")
    expect(_selected(page, "Reasoning vs difficulty")).to_have_attribute("aria-selected", "true")
    plot = page.locator("#fig-reasoning-vs-difficulty")
    expect(plot.locator(".js-plotly-plot .main-svg").first).to_be_visible(timeout=30_000)
    name, data = _download(page, lambda: page.locator("#fig-reasoning-vs-difficulty-csv").click())
    assert name == "reasoning-vs-difficulty.csv"
    csv = pd.read_csv(io.StringIO(data.decode()))
    bands = by_band(services.queries, 5)
    assert list(csv.columns) == list(bands.columns)
    # the rows are the figure's own data: its bars and lines, as plotly.js drew them in the page (_fullData:
    # the arrays decoded, where gd.data keeps plotly.py's base64 typed arrays)
    drawn = plot.locator(".js-plotly-plot").evaluate(
        "gd => gd._fullData.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}))")
    assert drawn[0]["x"] == list(csv["difficulty"].astype(str)) == list(bands["difficulty"].astype(str))
    assert drawn[0]["y"] == pytest.approx(list(csv["reason rate"]))
    for trace in drawn[1:]:
        assert trace["y"] == pytest.approx(list(csv[trace["name"]]))
    name, svg = _download(page, lambda: plot.get_by_role("button", name="SVG", exact=True).click())
    assert name == "reasoning-vs-difficulty.svg" and svg.startswith(b"<svg")
    assert b"When does the model reason?" in svg
    name, png = _download(page, lambda: plot.get_by_role("button", name="PNG", exact=True).click())
    assert name == "reasoning-vs-difficulty.png" and png.startswith(b"\x89PNG\r\n\x1a\n")
    assert not page.page_errors, page.page_errors


def test_the_walkthrough_figure_downloads_what_it_draws(page, app_url, services):
    from app.links import View, view_query
    from app.walkthrough_view import decision_frame
    from trace_core.explain import first_step
    from trace_core.records import Query

    task, text = "webqa_task1", "who painted the mona lisa?"
    _open(page, app_url, view_query(View("walkthrough", task, text, "", "auto")))
    plot = page.locator("#wt-decision-plot")
    expect(plot.locator(".js-plotly-plot .main-svg").first).to_be_visible(timeout=60_000)
    csv_button = page.locator("#wt-decision-plot-csv")
    expect(csv_button).to_be_visible()
    _, data = _download(page, lambda: csv_button.click())
    csv = pd.read_csv(io.StringIO(data.decode()), keep_default_na=False)
    query = Query(text=text, instruction=services.tasks[task].instructions[0])
    want = decision_frame(first_step(services.encoder, query, "auto", 0.0, top=10))
    assert list(csv.columns) == list(want.columns)
    assert list(csv["token_id"]) == list(want["token_id"]) and list(csv["kind"]) == list(want["kind"])
    assert list(csv["probability"]) == pytest.approx(list(want["probability"]), rel=1e-4)
    drawn = plot.locator(".js-plotly-plot").evaluate("gd => Array.from(gd._fullData[0].y)")
    assert drawn == pytest.approx(list(csv["probability"]), rel=1e-4)
    _, svg = _download(page, lambda: plot.get_by_role("button", name="SVG", exact=True).click())
    assert svg.startswith(b"<svg")


# ------------------------------------------------------------------------------------------ the edited CoT
def test_editing_the_cot_in_the_walkthrough_shows_the_gold_before_and_after(page, app_url, services):
    from app.first_visit import example_queries
    from app.links import View, instruction_for, view_query
    from app.usecases import another_cot, search, search_with_cot

    task = "mscoco_task0"
    t = services.tasks[task]
    q = t.queries[2]
    k = 5  # the walkthrough's top-k
    typed = search(services, task, q.text, None, t.instructions[0], "always", k)
    typed_direct = search(services, task, q.text, None, t.instructions[0], "never", k)
    # the benchmark query runs with the instruction it was evaluated with, as the tab sets it up
    instruction = instruction_for(example_queries(services, task, 6), t.instructions[0], q.qid)
    own = search(services, task, q.text, None, instruction, "always", k, q.qid)
    direct = search(services, task, q.text, None, instruction, "never", k, q.qid)
    _open(page, app_url, view_query(View("walkthrough", task, q.text, "", "always")))
    panel = page.locator("#walkthrough-panel")
    expect(panel.get_by_text("Step 5").first).to_be_visible()
    edit = page.locator("#wt-cot-edit")
    box = edit.locator("textarea")
    expect(box).to_be_visible(timeout=60_000)
    expect(box).to_have_value(typed.result.cot)  # the model's own thought, offered for editing
    table = edit.locator(".fit-table")
    expect(table).to_be_hidden()  # nothing to show before an edit
    # a free query (typed): no gold; the top-k before and after side by side
    edit.get_by_role("button", name="Blank it").click()
    expect(edit.get_by_text(re.compile(r"Free query: there is no gold"))).to_be_visible(timeout=60_000)
    expect(table).to_be_visible()
    rows = table.get_by_role("row")
    expect(rows).to_have_count(k + 1)
    expect(rows.nth(1)).to_contain_text(typed_direct.hits[0].caption[:30])
    # the benchmark query: the gold's rank before (the model's thought) and after (a thought by hand)
    _open(page, app_url, view_query(View("walkthrough", task, "", q.qid, "always")))
    expect(box).to_be_visible(timeout=60_000)
    expect(box).to_have_value(own.result.cot)
    thought = "It is a picture of an animal resting indoors."
    written = search_with_cot(services, task, q.text, None, instruction, thought, k, q.qid)
    box.fill(thought)
    edit.get_by_role("button", name="Re-embed with this thought").click()
    line = edit.get_by_text(re.compile(rf"Gold rank {own.gold_rank} → {written.gold_rank} with the edited CoT"))
    expect(line).to_be_visible(timeout=60_000)
    expect(rows).to_have_count(k + 1)
    expect(rows.nth(1)).to_contain_text(written.hits[0].caption[:30])
    expect(rows.nth(1)).to_contain_text(own.hits[0].caption[:30])
    edit.get_by_role("button", name="Blank it").click()
    expect(edit.get_by_text(re.compile(
        rf"Gold rank {own.gold_rank} → {direct.gold_rank} with a blank CoT"))).to_be_visible(timeout=60_000)
    assert box.input_value() == ""
    # a mistake is a warning; the last edit stays
    box.fill("x" * 2100)
    edit.get_by_role("button", name="Re-embed with this thought").click()
    expect(edit.locator(".query-warning")).to_contain_text("too long")
    expect(edit.get_by_text(re.compile(rf"→ {direct.gold_rank} with a blank CoT"))).to_be_visible()
    # another query's thought from the evaluation, re-embedded at once
    other = another_cot(services, task, q.qid)
    edit.get_by_role("button", name="Take another query's thought").click()
    expect(box).to_have_value(other.cot)
    expect(edit.locator(".query-info")).to_contain_text(other.qid, timeout=60_000)
    expect(edit.get_by_text(re.compile(rf"Gold rank {own.gold_rank} → \d+ with the edited CoT"))).to_be_visible()
    assert not page.page_errors, page.page_errors


def test_the_search_edit_table_is_hidden_until_an_edit(page, app_url):
    from app.links import View, view_query

    _open(page, app_url, view_query(View("search", "webqa_task1", "who painted it?", "", "never")))
    edit = page.locator("#cot-edit")
    expect(edit.locator("textarea")).to_be_visible(timeout=60_000)
    table = edit.locator(".fit-table")
    expect(table).to_be_hidden()
    edit.get_by_role("button", name="Blank CoT").click()
    expect(table).to_be_visible(timeout=60_000)
    assert table.get_by_role("row").count() > 1
    # a new search hides it again: the edit was of the last query
    page.locator("#search-panel").get_by_role("button", name="Search", exact=True).click()
    expect(table).to_be_hidden(timeout=60_000)
