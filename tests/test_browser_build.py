"""The page while the server still builds (Chromium): it answers, says what it builds, the ready tabs work, and
the map tab fills in when its map is done."""

from __future__ import annotations

import os
import threading

import pytest

from tests.browser_fixture import CHROMIUM, chromium, serve

sync_api = pytest.importorskip("playwright.sync_api")
if CHROMIUM is None and os.environ.get("TRACE_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed (bash scripts/setup.sh installs it)", allow_module_level=True)


def test_the_page_works_while_the_map_is_built_and_the_map_tab_fills_in(tmp_path, monkeypatch):
    import app.services as services_module
    from app.services import Services
    from tests.mbeir_fixture import build_fixture
    from tests.tiny_mini import build_tiny_mini
    from trace_core.loading import load_model

    fx = build_fixture(tmp_path / "mbeir")
    model = build_tiny_mini(tmp_path / "mini")
    encoder = load_model(str(model))
    cache = str(tmp_path / "cache")
    Services.load(str(model), fx["root"], "test", cache, encoder=encoder, embedding_map=False)  # indexes only
    gate = threading.Event()
    real = services_module.load_or_build

    def held(*args, **kwargs):  # the map's UMAP fit, held until the test has looked at the page
        assert gate.wait(600)
        return real(*args, **kwargs)

    monkeypatch.setattr(services_module, "load_or_build", held)
    services = Services.load(str(model), fx["root"], "test", cache, encoder=encoder, embedding_map=True,
                             background=True)
    assert services.map is None and services.build.state_of("map") == "running"
    try:
        with serve(services) as url, chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="load")
            expect = sync_api.expect
            expect(page.locator(".build-status").first).to_contain_text("Still building")
            expect(page.locator(".build-status").first).to_contain_text("Embedding map")
            # A ready tab works meanwhile: a search answers.
            panel = page.locator("#search-panel")
            panel.get_by_label("Query text").fill("a dog on a sofa")
            panel.get_by_label("never", exact=True).check()
            panel.get_by_role("button", name="Search", exact=True).click()
            expect(panel.locator(".route-badge")).to_contain_text("direct", timeout=60_000)
            # The map tab says what it waits for, then fills in once the map is built.
            page.get_by_role("tab", name="Embedding map", exact=True).click()
            expect(page.get_by_text("This tab fills in when its data is built")).to_be_visible()
            assert page.locator(".trace-map-plot").count() == 0
            # The map's API is there from the start (not registered late with the tab) and says why it waits.
            from gradio_client import Client

            client = Client(url, verbose=False)
            assert "/map_place" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
            with pytest.raises(Exception, match="embedding map is not ready yet"):
                client.predict("a dog on a sofa", None, "mscoco_task0", "never", 3, api_name="/map_place")
            gate.set()
            expect(page.locator(".trace-map-plot").first).to_be_visible(timeout=90_000)
            expect(page.get_by_text("This tab fills in when its data is built")).to_be_hidden()
            placed = client.predict("a dog on a sofa", None, "mscoco_task0", "never", 3, api_name="/map_place")
            assert len(placed["neighbours"]) == 3 and "Route **direct**" in placed["description"]
            # ... and the banner is gone: everything is built.
            expect(page.locator(".build-status").first).to_be_hidden(timeout=30_000)
    finally:
        gate.set()
