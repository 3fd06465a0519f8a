"""A tab whose data is still being built in the background: it says what it waits for, then fills in.

`python app.py` serves before the embedding map or the `--build-analysis` evaluation exists (`Services.load(
background=True)`). A tab that needs one is built inside `gr.render`, triggered once by a per-visitor flag that a
timer sets when the stage is done; until then the tab shows the stage's progress (`app.building`). A visitor who
opens the page after the build finished gets the tab at once, with no timer.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from .services import Services

# Which background stage each tab needs (tab id -> stage); the others need nothing the server builds late.
NEEDS = {"map": "map", "difficulty": "analysis", "errors": "analysis", "benchmark": "analysis"}


def pending_stage(services: Services, tab_id: str) -> str | None:
    """The stage this tab still waits for, or None when it can be built now."""
    stage = NEEDS.get(tab_id)
    if services.build is None or stage is None or services.build.state_of(stage) in (None, "done"):
        return None
    return stage


def build_when_ready(services: Services, stage: str, build: Callable[[], object]) -> None:
    """Show `stage`'s progress every 2 s; once it is done, run `build()` (the tab's own builder) in its place."""
    build_state = services.build

    def waiting_text() -> str:
        return (f"**This tab fills in when its data is built** (in the background; the other tabs work now).\n\n"
                f"{build_state.describe(stage)}")

    note = gr.Markdown(waiting_text(), elem_classes="build-status")
    ready = gr.State(False)
    timer = gr.Timer(2.0)

    def tick(is_ready: bool):
        state = build_state.state_of(stage)
        if state == "done" and not is_ready:
            return gr.Markdown(visible=False), True, gr.Timer(active=False)
        if state == "failed":
            return gr.Markdown(f"**This tab cannot be shown:** {build_state.describe(stage)}"), gr.skip(), \
                gr.Timer(active=False)
        return waiting_text(), gr.skip(), gr.skip()

    timer.tick(tick, ready, [note, ready, timer], api_visibility="private", show_progress="hidden")

    @gr.render(inputs=ready)
    def body(is_ready: bool):
        if is_ready:
            build()
