"""What every browser test needs: the app launched on given services, and Debian's Chromium driven by Playwright.

Each browser test module skips itself when Chromium is missing (unless TRACE_REQUIRE_BROWSER=1, as in CI)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)


@contextmanager
def serve(services) -> Iterator[str]:
    """The app on `services`, launched on a free port as `python app.py` would (queue, CSS); its URL."""
    from app.ui import build_app, css

    demo = build_app(services)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=css())
    try:
        yield url
    finally:
        demo.close()


@contextmanager
def chromium():
    """A headless Chromium browser (Playwright's sync API)."""
    from playwright import sync_api

    assert CHROMIUM, "TRACE_REQUIRE_BROWSER=1 but no chromium on PATH"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, **options):
    """A 1400 x 1000 page at `url` that records the page's JavaScript errors in `page.page_errors`; a loaded
    2-core machine renders slowly, so actions wait up to 60 s."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, **options)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(60_000)
    page.page_errors = errors
    page.goto(url, wait_until="load")
    return page
