"""A real browser (Playwright driving Debian's Chromium) against the launched app on a tiny model.

It runs a search and sees results and the chain of thought, opens every tab, sees the difficulty plots, the
embedding map drawn by plotly.js with a live query placed on it, the error table and a walkthrough.
`scripts/setup.sh` installs Chromium; without it the test is skipped, unless TRACE_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.app_fixture import build_services

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
sync_api = pytest.importorskip("playwright.sync_api")
if CHROMIUM is None and os.environ.get("TRACE_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed (bash scripts/setup.sh installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from app.ui import build_app, css

    services = build_services(tmp_path_factory.mktemp("browser"), with_map=True)
    demo = build_app(services)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=css())
    yield url
    demo.close()


@pytest.fixture(scope="module")
def page(app_url):
    assert CHROMIUM, "TRACE_REQUIRE_BROWSER=1 but no chromium on PATH"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(60_000)  # a loaded 2-core machine renders slowly
        page.goto(app_url, wait_until="load")
        sync_api.expect(page.get_by_role("tab", name="Search", exact=True)).to_be_visible()
        page.page_errors = errors
        yield page
        browser.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _choose(page, label: str, option: str) -> None:
    """Pick an option of the visible Gradio dropdown labelled `label`."""
    page.get_by_label(label).locator("visible=true").first.click()
    page.get_by_role("option", name=option).first.click()


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
