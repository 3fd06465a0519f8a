"""Deep links: the view a page shows (tab, task, query, reasoning mode, routing bias) as a URL query string,
and a query string back into a view, checked. No Gradio here: `ui.py` reads the page's query string on load
(`parse_view`), and rebuilds it (`view_query`) as the person changes the view.

    ?tab=search&task=cirr_task7&qid=7:1234&mode=always&bias=-2

The query of a link is a typed text (`q`) or a benchmark query by its id (`qid`: its text, its image and its
gold come from the data). An image a person uploaded cannot be in a link: nothing of it reaches the URL.
A value the link gets wrong (an unknown task, a mode that does not exist, a bias that is not a number) is
replaced by the default and said in a sentence, so that a link typed by hand on a slide never breaks the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from PIL import Image

from trace_core.records import REASONING_MODES

from .usecases import MAX_QUERY_CHARS

KEYS = ("tab", "task", "q", "qid", "mode", "bias")  # the link's parameters; any other one (Gradio's) is left alone
QUERY_TABS = ("search", "walkthrough")  # the tabs whose query is part of the link
BIAS_LIMIT = 10.0  # the routing-bias sliders run from -10 to 10


@dataclass(frozen=True)
class LinkTask:
    """What a link is checked against for one task."""

    takes_text: bool  # a typed query is used (else `q` is refused)
    takes_image: bool  # a query needs an image, which only a benchmark query (`qid`) can bring
    qids: frozenset[str]  # its benchmark queries


@dataclass(frozen=True)
class View:
    """What a link shows: a tab and, on the Search and Walkthrough tabs, the query set up in it."""

    tab: str
    task: str = ""  # "" on a tab without a query
    text: str = ""  # a typed query; "" when `qid` names the query
    qid: str = ""  # a benchmark query of `task`
    mode: str = "auto"
    bias: float = 0.0


@dataclass(frozen=True)
class Restored:
    """A link read back: the view, what was wrong with it (each a sentence), and whether its query is whole."""

    view: View
    warnings: tuple[str, ...] = ()
    run: bool = False  # a query to run at once: a benchmark query, or a text on a task that needs no image


@dataclass
class LinkSlots:
    """The components of a query tab that a link reads and fills (Gradio components: held here, never used).

    `fields` are (task, text, qid, mode, bias) in `View`'s order; the tab listens to `restore` (a gr.State)
    for a `Restored` and fills its inputs from it."""

    fields: tuple[Any, ...]
    restore: Any


def _one(params: Mapping[str, Any], key: str) -> str:
    """A parameter as a stripped string ("" when absent); a repeated one (a list) counts by its last value."""
    value = params.get(key)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else ""
    return value.strip() if isinstance(value, str) else ""


def parse_bias(raw: str) -> float | None:
    """The routing bias of a link, or None when it is not a finite number within the sliders' range."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) <= BIAS_LIMIT else None


def parse_view(params: Mapping[str, Any], tabs: Sequence[str], tasks: Mapping[str, LinkTask],
               default_task: str) -> Restored:
    """The view a link's query parameters ask for, each bad value replaced by its default with a warning.

    tabs: the tab ids, the first the default; tasks: by name; default_task: the task a query tab opens on.
    """
    warnings: list[str] = []
    get = {k: _one(params, k) for k in KEYS}
    asked = [k for k in KEYS[1:] if get[k]]
    tab = get["tab"].lower()
    if tab and tab not in tabs:
        warnings.append(f"The link names a tab {get['tab']!r} that does not exist (tabs: {', '.join(tabs)}): "
                        f"showing {tabs[0]}.")
        tab = ""
    tab = tab or (QUERY_TABS[0] if asked and QUERY_TABS[0] in tabs else tabs[0])
    if tab not in QUERY_TABS or not tasks:
        if asked:
            warnings.append(f"The {tab} tab takes no query: the link's {', '.join(asked)} are not used.")
        return Restored(View(tab), tuple(warnings))

    task, qid = get["task"], get["qid"]
    if task and task not in tasks:
        warnings.append(f"The link names a task {task!r} that does not exist here: showing "
                        f"{tasks_named(qid, tasks) or default_task} instead.")
        task = ""
    if qid:
        owner = tasks_named(qid, tasks)
        if task and qid not in tasks[task].qids:
            warnings.append(f"{qid!r} is not a benchmark query of {task}: the link's query id is not used.")
            qid = ""
        elif not task and owner is None:
            warnings.append(f"The link names a benchmark query {qid!r} that does not exist here: it is not used.")
            qid = ""
        task = task or owner or ""
    task = task or default_task
    spec = tasks[task]

    text = get["q"]
    if text and qid:
        warnings.append("The link gives both a query text and a benchmark query id: the benchmark query is "
                        "shown.")
        text = ""
    elif text and not spec.takes_text:
        warnings.append(f"{task} takes an image query, and a link cannot carry an image: the link's query text "
                        "is not used. Upload an image, or link a benchmark query by its qid.")
        text = ""
    elif len(text) > MAX_QUERY_CHARS:
        warnings.append(f"The link's query text is too long (over {MAX_QUERY_CHARS:,} characters): it is not "
                        "used.")
        text = ""

    mode = get["mode"].lower()
    if mode and mode not in REASONING_MODES:
        warnings.append(f"The link's reasoning mode {get['mode']!r} does not exist (modes: "
                        f"{', '.join(REASONING_MODES)}): using auto.")
        mode = ""
    bias = 0.0
    if get["bias"]:
        parsed = parse_bias(get["bias"])
        if parsed is None:
            warnings.append(f"The link's routing bias {get['bias']!r} is not a number from {-BIAS_LIMIT:g} to "
                            f"{BIAS_LIMIT:g}: using 0.")
        else:
            bias = parsed

    run = bool(qid) or (bool(text) and not spec.takes_image)
    if text and spec.takes_image and not qid:
        warnings.append(f"{task} needs an image as well, and a link cannot carry one: upload it, then run the "
                        "query.")
    return Restored(View(tab, task, text, qid, mode or "auto", bias), tuple(warnings), run)


def tasks_named(qid: str, tasks: Mapping[str, LinkTask]) -> str | None:
    """The task whose benchmark query `qid` is, or None."""
    return next((name for name, t in tasks.items() if qid and qid in t.qids), None) if qid else None


def view_of(tab: str, task: str | None = None, text: str | None = None, qid: str | None = None,
            mode: str | None = "auto", bias: float | None = 0.0) -> View:
    """The view a tab's inputs show, made canonical: a benchmark query by its id alone (its text is the data's),
    a mode that does not exist as auto, a bias that is not a finite number as 0."""
    if tab not in QUERY_TABS:
        return View(tab)
    try:
        b = float(bias) if bias is not None else 0.0
    except (TypeError, ValueError):
        b = 0.0
    text = (text if isinstance(text, str) else "").strip()
    return View(tab, task or "", "" if qid else text, qid or "", mode if mode in REASONING_MODES else "auto",
                b if math.isfinite(b) else 0.0)


def view_query(view: View) -> str:
    """The link's query string (no leading "?"): defaults (auto, bias 0) and empty fields left out."""
    pairs = [("tab", view.tab)]
    if view.tab in QUERY_TABS:
        pairs += [("task", view.task)] if view.task else []
        pairs += [("qid", view.qid)] if view.qid else [("q", view.text)] if view.text else []
        pairs += [("mode", view.mode)] if view.mode != "auto" else []
        pairs += [("bias", f"{view.bias:g}")] if view.bias else []
    return urlencode(pairs, quote_via=quote)


# ------------------------------------------------------------------------------------------ filling a tab
def benchmark_query(services, task_name: str, qid: str) -> tuple[str, Image.Image | None]:
    """The text and the image of a benchmark query (`services.tasks[task_name]`), as the query inputs take them."""
    q = next(q for q in services.tasks[task_name].queries if q.qid == qid)
    return q.text or "", Image.open(services.image_path(q.image_path)) if q.image_path else None


def instruction_for(examples: Sequence, default: str, qid: str | None) -> str:
    """The instruction a query runs with: an example's own (the one it was evaluated with), else `default`."""
    return next((e.instruction for e in examples if qid and e.qid == qid and e.instruction), default)


@dataclass(frozen=True)
class LinkedInputs:
    """What a deep link puts in a query tab's inputs (Search, Walkthrough), and whether it runs at once."""

    task: str
    text: str
    image: Image.Image | None
    qid: str
    instruction: str
    mode: str
    bias: float
    run: bool


def linked_inputs(services, examples_of: Mapping[str, Sequence], restored: Restored) -> LinkedInputs:
    """The inputs of `restored`'s view: a benchmark query's own text, image and instruction, or the link's text."""
    v = restored.view
    text, image = benchmark_query(services, v.task, v.qid) if v.qid else (v.text, None)
    instruction = instruction_for(examples_of[v.task], services.tasks[v.task].instructions[0], v.qid)
    return LinkedInputs(v.task, text, image, v.qid, instruction, v.mode, v.bias, restored.run)
