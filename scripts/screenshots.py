"""Full-page screenshots of every tab of a running app, as a visitor sees them (Playwright + Debian Chromium).

    .venv/bin/python app.py &                     # wait until it answers
    .venv/bin/python scripts/screenshots.py [--url http://127.0.0.1:7860] [--out /tmp/shots]

On the Search tab it first runs an example query of the task (as evaluated: reasoning auto), so the results,
the chain of thought and the route badge are on the page; then each tab is opened and photographed (1400 px wide).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

TABS = ("Search", "Reasoning vs difficulty", "Embedding map", "Error inspection", "Walkthrough", "Benchmark")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--out", default="/tmp/shots")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--task", default="", help="pair name of the Search task to show (default: the app's)")
    parser.add_argument("--example", type=int, default=0, help="which example query of the task to run")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: Debian's chromium is not installed (bash scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": args.width, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(args.url, wait_until="load")
        page.get_by_role("tab", name="Search", exact=True).wait_for()
        page.screenshot(path=str(out / "0-first-load.png"), full_page=True)
        panel = page.locator("#search-panel")
        if args.task:  # a task of the dropdown, by the pair name in its label
            panel.get_by_label("Task").locator("visible=true").first.click()
            page.get_by_role("option", name=f"({args.task})").first.click()
            page.wait_for_timeout(2000)
        panel.locator(".example-queries tbody tr").nth(args.example).click()  # runs the example (auto)
        page.wait_for_timeout(1000)
        page.locator(".route-badge").filter(has_not_text="thinking").first.wait_for()
        page.wait_for_timeout(3000)
        for n, tab in enumerate(TABS, start=1):
            page.get_by_role("tab", name=tab, exact=True).click()
            page.wait_for_timeout(4000)  # plots and tables render
            path = out / f"{n}-{tab.lower().replace(' ', '-')}.png"
            page.screenshot(path=str(path), full_page=True)
            print(path)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
