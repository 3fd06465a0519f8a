"""A real browser (Playwright driving Debian's Chromium) against the launched app on a tiny model.

It runs a search and sees results and the chain of thought, opens every tab, sees the difficulty plots, the
embedding map drawn by plotly.js with a live query placed on it, the error table and a walkthrough.
`scripts/setup.sh` installs Chromium; without it the test is skipped, unless TRACE_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import os
import re

import pytest

from tests.app_fixture import build_services
from tests.browser_fixture import CHROMIUM, chromium, open_page, serve

sync_api = pytest.importorskip("playwright.sync_api")
if CHROMIUM is None and os.environ.get("TRACE_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed (bash scripts/setup.sh installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    return build_services(tmp_path_factory.mktemp("browser"), with_map=True)


@pytest.fixture(scope="module")
def app_url(services):
    with serve(services) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    with chromium() as browser:
        page = open_page(browser, app_url)
        sync_api.expect(page.get_by_role("tab", name="Search", exact=True)).to_be_visible()
        yield page


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _choose(page, label: str, option: str) -> None:
    """Pick an option of the visible Gradio dropdown labelled `label`."""
    page.get_by_label(label).locator("visible=true").first.click()
    page.get_by_role("option", name=option).first.click()


def _search_panel(page):
    """The Search tab's panel (each tab has its own task, text and image inputs)."""
    return page.locator("#search-panel")


def _run_search(page, task: str, text: str, mode: str = "never") -> None:
    _tab(page, "Search")
    _choose(page, "Task", f"({task})")
    panel = _search_panel(page)
    panel.get_by_label("Query text").fill(text)
    panel.get_by_label(mode, exact=True).check()
    panel.get_by_role("button", name="Search", exact=True).click()
    sync_api.expect(panel.locator(".route-badge")).not_to_contain_text("thinking", timeout=60_000)
    sync_api.expect(panel.locator(".route-badge")).not_to_contain_text("no query yet", timeout=60_000)


def test_search_shows_route_cot_and_results(page):
    _tab(page, "Search")
    _choose(page, "Task", "(mscoco_task0)")
    page.get_by_label("Query text").first.fill("a dog on a sofa")
    page.get_by_label("always").first.check()
    page.get_by_role("button", name="Search", exact=True).click()
    badge = page.locator(".route-badge")
    sync_api.expect(badge).to_contain_text("reasoned before embedding", timeout=60_000)
    sync_api.expect(badge).to_contain_text("P(<|emb|> first)")
    # the tiny random model's CoT may be whitespace; the panel holds it and the stats line counts it
    cot = page.get_by_label("Chain of thought (streams as it is generated)")
    assert cot.input_value(), "the CoT panel is empty after a forced-reasoning search"
    sync_api.expect(page.get_by_text(re.compile(r"[1-9]\d* CoT tokens"))).to_be_visible()
    sync_api.expect(page.locator("table").filter(has_text="candidate").first).to_be_visible()
    assert page.locator(".gallery-item, button.thumbnail-item").count() > 0


def test_every_tab_opens_with_its_content(page):
    from app.ui import TABS

    for name, _ in TABS:
        sync_api.expect(page.get_by_role("tab", name=name, exact=True)).to_be_visible()
    _tab(page, "Reasoning vs difficulty")
    sync_api.expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
    _tab(page, "Embedding map")
    plot = page.locator(".trace-map-plot")
    sync_api.expect(plot.locator(".main-svg").first).to_be_visible(timeout=30_000)
    assert plot.locator("canvas").count() > 0  # the scattergl points
    _tab(page, "Error inspection")
    sync_api.expect(page.get_by_text("failures only").first).to_be_visible()
    _tab(page, "Walkthrough")
    sync_api.expect(page.get_by_text("Walk through").first).to_be_visible()
    _tab(page, "Benchmark")
    sync_api.expect(page.get_by_text("M-BEIR").first).to_be_visible()
    assert not page.page_errors, page.page_errors


def test_a_live_query_is_placed_on_the_map(page):
    _tab(page, "Embedding map")
    page.get_by_label("Query text").locator("visible=true").fill("who painted the picture?")
    page.get_by_role("button", name="Place on the map").click()
    sync_api.expect(page.get_by_text("Placed at the similarity-weighted mean").first).to_be_visible(timeout=60_000)
    # the highlight traces were added to the same figure: the star of the focused query is drawn
    sync_api.expect(page.locator(".trace-map-plot .legendtext", has_text="focus")).to_have_count(1)
    sync_api.expect(page.locator(".trace-map-plot .legendtext", has_text="top-k hits")).to_have_count(1)
    assert not page.page_errors, page.page_errors


def test_clicking_a_point_shows_the_item(page):
    _tab(page, "Embedding map")
    # the same event plotly.js emits on a click on point 0 (a candidate: candidates come first)
    page.evaluate("document.querySelector('.trace-map-plot').emit('plotly_click', {points: [{customdata: 0}]})")
    sync_api.expect(page.get_by_text(re.compile(r"Candidate .+ in the pool of")).first).to_be_visible()
    sync_api.expect(page.locator(".trace-map-plot .legendtext", has_text="focus")).to_have_count(1)
    assert not page.page_errors, page.page_errors


# ------------------------------------------------------------------------------------------ a first visit
def test_the_header_explains_trace_and_says_this_is_a_demo_model(page):
    sync_api.expect(page.get_by_text("In plain words").first).to_be_visible()
    sync_api.expect(page.get_by_text(re.compile(
        r"Paper: TRACE: Task-adaptive Reasoning And Compressing Embeddings \(arXiv 2603\.02929")).first).to_be_visible()
    notice = page.locator(".prose.demo-notice")
    sync_api.expect(notice).to_contain_text("Demo model")
    sync_api.expect(notice).to_contain_text("not the paper's model")
    sync_api.expect(notice).to_contain_text("it reasons on")  # which tasks reason, from the evaluation


def test_an_example_of_the_default_task_finds_its_gold(page, services, app_url):
    from app.first_visit import default_task, example_queries

    page.goto(app_url, wait_until="load")  # a first visit (the address bar follows the view: no reload)
    panel = _search_panel(page)
    first = example_queries(services, default_task(services), 4)[0]
    rows = panel.locator(".example-queries tbody tr")
    sync_api.expect(rows).to_have_count(len(example_queries(services, default_task(services), 4)))
    sync_api.expect(rows.first).to_contain_text(f"gold at #{first.gold_rank}")
    # the benchmark-query dropdown is filled on first load, for the default task
    panel.get_by_label("Any benchmark query of this task (gold marked)").click()
    sync_api.expect(page.get_by_role("option").first).to_be_visible()
    page.keyboard.press("Escape")
    rows.first.click()
    sync_api.expect(panel.get_by_text(re.compile(rf"is at rank {first.gold_rank} \(in the top-k\)"))).to_be_visible(
        timeout=60_000)
    sync_api.expect(panel.get_by_role("gridcell", name="✓").first).to_be_visible()


def test_candidates_show_what_they_are_and_captions_are_not_cut(page):
    _run_search(page, "mscoco_task0", "a dog on a sofa")
    panel = _search_panel(page)
    gallery = panel.locator(".hits-gallery").first
    sync_api.expect(gallery.locator(".caption-label").first).to_contain_text("image · ")
    cut = gallery.evaluate("""g => [...g.querySelectorAll('.caption-label')]
        .filter(c => c.scrollWidth > c.clientWidth + 1 || c.getBoundingClientRect().bottom >
                     g.getBoundingClientRect().bottom + 1).length""")
    assert cut == 0, f"{cut} gallery captions are cut or clipped"
    sync_api.expect(panel.get_by_role("gridcell", name=re.compile("^image · ")).first).to_be_visible()
    # a text task shows no empty gallery box
    _run_search(page, "webqa_task1", "who painted it?")
    sync_api.expect(panel.locator(".hits-gallery").first).to_be_hidden()
    sync_api.expect(panel.get_by_role("gridcell", name=re.compile("Wikipedia passage")).first).to_be_visible()


def test_a_mistake_is_a_warning_and_the_last_results_stay(page):
    _run_search(page, "webqa_task1", "who painted it?")
    panel = _search_panel(page)
    rows_before = panel.locator(".fit-table tbody tr").count()
    assert rows_before > 0
    panel.get_by_label("Query text").fill("   ")
    panel.get_by_role("button", name="Search", exact=True).click()
    sync_api.expect(panel.locator(".query-warning")).to_contain_text("empty")
    sync_api.expect(page.locator(".toast-body").filter(has_text="empty").first).to_be_visible()
    assert panel.locator(".fit-table tbody tr").count() == rows_before  # the last results stay
    sync_api.expect(panel.locator(".route-badge")).to_be_visible()
    assert not panel.locator(".error").filter(has_text="Error").count()  # no red overlay
    _run_search(page, "webqa_task1", "who painted the picture?")  # and the next search clears the note
    sync_api.expect(panel.locator(".query-warning")).to_have_count(0)


def test_search_with_a_result_on_an_image_task(page, services):
    from app.first_visit import example_queries

    _tab(page, "Search")
    _choose(page, "Task", "(cirr_task7)")
    panel = _search_panel(page)
    sync_api.expect(panel.get_by_label("Query text")).to_be_visible()
    sync_api.expect(panel.locator(".example-queries img.example-thumb").first).to_be_visible()  # its thumbnails
    panel.locator(".example-queries tbody tr").first.click()  # an image + text benchmark query
    ex = example_queries(services, "cirr_task7", 4)[0]
    gold = panel.get_by_text(re.compile(rf"is at rank {ex.gold_rank} \(in the top-k\)"))
    try:
        sync_api.expect(gold.first).to_be_visible(timeout=60_000)
    except AssertionError:
        page.screenshot(path="/tmp/browser-fail.png", full_page=True)
        raise
    # the query went into the inputs: searching it again from there finds the gold at the same rank
    panel.get_by_role("button", name="Search", exact=True).click()
    sync_api.expect(panel.locator(".route-badge")).not_to_contain_text("thinking", timeout=60_000)
    sync_api.expect(gold.first).to_be_visible(timeout=60_000)
    badge_before = panel.locator(".route-badge").inner_text()
    panel.locator(".hits-gallery").first.locator(".thumbnail-item").nth(1).click()
    # the result became the reference image; the task still takes it, so the search runs without an error
    sync_api.expect(panel.get_by_text(re.compile(r"Free query: no gold"))).to_be_visible(timeout=60_000)
    assert panel.locator(".query-warning").count() == 0 and badge_before
    sync_api.expect(panel.locator("#search-query-image img").first).to_be_visible()
    assert "cirr_task7" in panel.get_by_label("Task", exact=True).input_value()
    # from a text-only task, a clicked image result moves to a task that takes an image
    _run_search(page, "mscoco_task0", "a dog on a sofa")
    panel.locator(".hits-gallery").first.locator(".thumbnail-item").first.click()
    sync_api.expect(panel.get_by_label("Task", exact=True)).to_have_value(re.compile("cirr_task7"), timeout=60_000)
    sync_api.expect(panel.get_by_text(re.compile(r"Free query: no gold"))).to_be_visible(timeout=60_000)
    assert panel.locator(".query-warning").count() == 0


def test_a_text_task_clears_and_hides_the_image(page):
    _tab(page, "Search")
    _choose(page, "Task", "(cirr_task7)")
    panel = _search_panel(page)
    panel.locator(".example-queries tbody tr").first.click()
    sync_api.expect(panel.locator("#search-query-image img").first).to_be_visible(timeout=60_000)
    _choose(page, "Task", "(webqa_task1)")
    sync_api.expect(panel.get_by_label("Query image")).to_be_hidden()
    _choose(page, "Task", "(cirr_task7)")
    sync_api.expect(panel.locator("#search-query-image img")).to_have_count(0)


def test_compare_replaces_the_previous_query_on_the_page(page):
    _run_search(page, "webqa_task1", "who painted it?", "never")
    panel = _search_panel(page)
    panel.get_by_label("Query text").fill("what is known about the kite?")
    panel.get_by_role("button", name="Compare: reasoning off vs on").click()
    sync_api.expect(panel.get_by_text(re.compile(r"Top-\d+ overlap"))).to_be_visible(timeout=90_000)
    sync_api.expect(panel.locator(".route-badge")).to_contain_text("because you forced reasoning")
    sync_api.expect(panel.get_by_text(re.compile("Compare.*the run with reasoning"))).to_be_visible()
    # a new search clears the comparison: the page never shows two queries at once
    _run_search(page, "webqa_task1", "who painted it?", "never")
    sync_api.expect(panel.get_by_text(re.compile(r"Top-\d+ overlap"))).to_have_count(0)


TABS_TO_CHECK = ["Search", "Reasoning vs difficulty", "Embedding map", "Error inspection", "Walkthrough", "Benchmark"]


def test_no_table_is_cut_at_1400_px(page):
    _run_search(page, "mscoco_task0", "a dog on a sofa")
    for name in TABS_TO_CHECK:
        _tab(page, name)
        page.wait_for_timeout(500)
        cut = page.evaluate("""() => [...document.querySelectorAll('.table-wrap')]
            .filter(w => w.offsetParent !== null && w.scrollWidth > w.clientWidth + 1)
            .map(w => (w.getAttribute('aria-label') || '?') + ': ' + w.scrollWidth + ' > ' + w.clientWidth)""")
        assert not cut, f"{name}: {cut}"
        letters = page.evaluate(r"""() => [...document.querySelectorAll('th .header-content, th')]
            .filter(h => h.offsetParent !== null && h.innerText.trim().length > 3)
            .filter(h => { const words = h.innerText.split(/\s+/).filter(Boolean);
                           const lines = h.innerText.split('\n').filter(Boolean);
                           return lines.length > words.length + 1; })
            .map(h => h.innerText)""")
        assert not letters, f"{name}: headers broken inside words: {letters}"
    assert not page.page_errors, page.page_errors


# ------------------------------------------------------------------------------------------ the CoT as an experiment
def _set_bias(panel, value: float) -> None:
    number = panel.get_by_label("number input for Routing bias")
    number.fill(str(value))
    number.press("Enter")


def test_the_routing_bias_slider_shows_p_emb_before_and_after(page, services):
    from app.usecases import search

    query = "a dog on a sofa"
    plain = search(services, "mscoco_task0", query, None, None, "auto", 10).result
    bias = 3.0 if plain.emb_margin + 3.0 > 0 else 10.0  # enough to tip the tiny model's auto route to direct
    biased = search(services, "mscoco_task0", query, None, None, "auto", 10, routing_bias=bias)
    assert biased.result.route == "direct"
    _tab(page, "Search")
    _choose(page, "Task", "(mscoco_task0)")
    panel = _search_panel(page)
    panel.get_by_label("Query text").fill(query)
    panel.get_by_label("auto", exact=True).check()
    try:
        _set_bias(panel, bias)
        panel.get_by_role("button", name="Search", exact=True).click()
        badge = panel.locator(".route-badge")
        sync_api.expect(badge).to_contain_text(
            f"P(<|emb|> first) = {plain.p_emb:.2f} → {biased.p_emb_biased:.2f} with bias +{bias:.1f}", timeout=60_000)
        sync_api.expect(badge).to_contain_text("direct")
        if plain.route == "reason":
            sync_api.expect(badge).to_contain_text("because of your routing bias")
        # back at 0: the unbiased probability alone, and the model's own route
        _set_bias(panel, 0)
        panel.get_by_role("button", name="Search", exact=True).click()
        sync_api.expect(badge).to_contain_text("the model chose", timeout=60_000)
        sync_api.expect(badge).to_contain_text(f"P(<|emb|> first) = {plain.p_emb:.2f}")
        sync_api.expect(badge).not_to_contain_text("→")
    finally:
        _set_bias(panel, 0)  # the page is shared by the next tests
    assert not page.page_errors, page.page_errors


def test_editing_the_cot_reembeds_and_shows_how_the_gold_moved(page, services, app_url):
    from app.first_visit import default_task, example_queries
    from app.usecases import UserError, another_cot, search, search_with_cot

    page.goto(app_url, wait_until="load")
    panel = _search_panel(page)
    task = default_task(services)
    ex = example_queries(services, task, 4)[0]
    q = next(q for q in services.tasks[task].queries if q.qid == ex.qid)
    img = None
    if q.image_path:
        from PIL import Image

        img = Image.open(services.image_path(q.image_path))
    instruction = ex.instruction or services.tasks[task].instructions[0]
    direct = search(services, task, q.text, img, instruction, "never", 10, q.qid)
    panel.locator(".example-queries tbody tr").first.click()
    sync_api.expect(panel.get_by_text(re.compile(rf"is at rank {ex.gold_rank} \(in the top-k\)"))).to_be_visible(
        timeout=60_000)
    edit = panel.locator("#cot-edit")
    box = edit.locator("textarea")
    sync_api.expect(box).to_be_visible()
    # blank: the query embeds at once, so its gold lands where reasoning off puts it
    edit.get_by_role("button", name="Blank CoT").click()
    line = edit.get_by_text(re.compile(rf"Gold rank {ex.gold_rank} → {direct.gold_rank} with a blank CoT"))
    sync_api.expect(line).to_be_visible(timeout=60_000)
    assert box.input_value() == ""
    table = edit.locator(".fit-table")
    sync_api.expect(table.get_by_role("gridcell", name=direct.hits[0].did, exact=True).first).to_be_visible()
    rows = table.get_by_role("row")  # the header, then one per hit
    sync_api.expect(rows).to_have_count(len(direct.hits) + 1)
    # a thought written by hand: the ranking is that embedding's
    thought = "It is a picture of an animal resting indoors."
    written = search_with_cot(services, task, q.text, img, instruction, thought, 10, q.qid)
    box.fill(thought)
    edit.get_by_role("button", name="Re-embed with this CoT").click()
    sync_api.expect(edit.get_by_text(re.compile(
        rf"Gold rank {ex.gold_rank} → {written.gold_rank} with the edited CoT"))).to_be_visible(timeout=60_000)
    sync_api.expect(rows.nth(1)).to_contain_text(written.hits[0].did)
    # a mistake (a chain far too long) is a warning; the last edit's ranking stays
    box.fill("x" * 2100)
    edit.get_by_role("button", name="Re-embed with this CoT").click()
    sync_api.expect(edit.locator(".query-warning")).to_contain_text("too long")
    sync_api.expect(rows).to_have_count(len(written.hits) + 1)
    sync_api.expect(rows.nth(1)).to_contain_text(written.hits[0].did)
    # another query's chain of thought, from the evaluation (or a warning when the task has none)
    edit.get_by_role("button", name="Another query's CoT").click()
    try:
        other = another_cot(services, task, q.qid)
    except UserError as exc:
        sync_api.expect(edit.locator(".query-warning")).to_contain_text(str(exc)[:40])
    else:
        sync_api.expect(box).to_have_value(other.cot)
        sync_api.expect(edit.locator(".query-info")).to_contain_text(other.qid, timeout=60_000)
        sync_api.expect(edit.get_by_text(re.compile(r"Gold rank \d+ → \d+ with the edited CoT"))).to_be_visible()
    assert not page.page_errors, page.page_errors
