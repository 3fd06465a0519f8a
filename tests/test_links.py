"""Deep links (`app.links`): a query string read back into a view, checked, and a view written as a link.

Pure functions, no model: the oracle is the round trip (a view written and read back is the same view) and
the rules the module states (a bad value becomes its default with a sentence; a link never carries an image).
"""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from app.links import (
    KEYS,
    LinkTask,
    Restored,
    View,
    instruction_for,
    parse_bias,
    parse_view,
    tasks_named,
    view_of,
    view_query,
)
from app.usecases import MAX_QUERY_CHARS

TABS = ["search", "difficulty", "map", "errors", "walkthrough", "benchmark"]
TASKS = {
    "mscoco_task0": LinkTask(takes_text=True, takes_image=False, qids=frozenset({"9:1", "9:2"})),
    "cirr_task7": LinkTask(takes_text=True, takes_image=True, qids=frozenset({"7:1"})),
    "mscoco_task3": LinkTask(takes_text=False, takes_image=True, qids=frozenset({"9:50"})),
}
DEFAULT = "mscoco_task0"


def parse(**params) -> Restored:
    return parse_view(params, TABS, TASKS, DEFAULT)


def test_a_plain_address_is_the_first_tab_on_the_default_task_with_no_warning():
    r = parse()
    assert r.view == View("search", DEFAULT) and r.warnings == () and not r.run


def test_a_whole_search_link_is_read_and_runs():
    r = parse(tab="search", task="mscoco_task0", q=" a dog on a sofa ", mode="always", bias="-2.5")
    assert r.view == View("search", "mscoco_task0", "a dog on a sofa", "", "always", -2.5)
    assert r.warnings == () and r.run


def test_a_walkthrough_link_names_its_example_and_the_task_comes_from_it():
    r = parse(tab="walkthrough", qid="7:1")  # the task is the one whose benchmark query it is
    assert r.view == View("walkthrough", "cirr_task7", "", "7:1") and r.run and not r.warnings
    # a benchmark query brings its own image: an image task runs from a link only this way
    assert parse(tab="search", task="mscoco_task3", qid="9:50").run


def test_a_query_without_a_tab_opens_search():
    assert parse(q="cats").view.tab == "search"
    assert parse(tab="WalkThrough", q="cats").view.tab == "walkthrough"  # case does not matter


@pytest.mark.parametrize(("params", "field", "default", "says"), [
    ({"task": "nope_task1", "q": "a dog"}, "task", DEFAULT, "task 'nope_task1' that does not exist"),
    ({"q": "a dog", "mode": "sometimes"}, "mode", "auto", "mode 'sometimes' does not exist"),
    ({"q": "a dog", "bias": "lots"}, "bias", 0.0, "bias 'lots' is not a number"),
    ({"q": "a dog", "bias": "nan"}, "bias", 0.0, "is not a number"),
    ({"q": "a dog", "bias": "inf"}, "bias", 0.0, "is not a number"),
    ({"q": "a dog", "bias": "11"}, "bias", 0.0, "from -10 to 10"),
    ({"tab": "nowhere"}, "tab", "search", "tab 'nowhere' that does not exist"),
    ({"task": "mscoco_task0", "qid": "7:1"}, "qid", "", "not a benchmark query of mscoco_task0"),
    ({"qid": "0:0"}, "qid", "", "benchmark query '0:0' that does not exist"),
    ({"q": "x" * (MAX_QUERY_CHARS + 1)}, "text", "", "too long"),
])
def test_a_bad_value_becomes_its_default_with_a_sentence(params, field, default, says):
    r = parse(**params)
    assert getattr(r.view, field) == default
    assert len(r.warnings) == 1 and says in r.warnings[0], r.warnings
    # what the link got right is kept
    if field != "text" and "q" in params:
        assert r.view.text == params["q"] and r.run


def test_an_unknown_task_with_a_good_query_id_lands_on_that_querys_task():
    r = parse(task="nope", qid="7:1")
    assert r.view.task == "cirr_task7" and r.view.qid == "7:1" and "showing cirr_task7 instead" in r.warnings[0]


def test_a_link_cannot_carry_an_image():
    # a typed text on a task that takes only an image is refused, with the way out
    r = parse(task="mscoco_task3", q="a dog")
    assert r.view.text == "" and not r.run and "cannot carry an image" in r.warnings[0]
    # on a task that needs an image and a text, the text is filled but nothing runs until an image is uploaded
    r = parse(task="cirr_task7", q="make it blue")
    assert r.view.text == "make it blue" and not r.run and "upload it" in r.warnings[0]


def test_a_benchmark_query_wins_over_a_text():
    r = parse(task="mscoco_task0", qid="9:2", q="something else")
    assert r.view.qid == "9:2" and r.view.text == "" and "benchmark query is shown" in r.warnings[0]


def test_a_tab_without_a_query_ignores_the_query_and_says_so():
    r = parse(tab="benchmark", task="mscoco_task0", q="a dog")
    assert r.view == View("benchmark") and not r.run
    assert "takes no query" in r.warnings[0] and "task, q" in r.warnings[0]
    assert parse(tab="difficulty") == Restored(View("difficulty"))
    # no task loaded at all: the query tabs are only tabs
    assert parse_view({"tab": "search", "q": "x"}, TABS, {}, "").view == View("search")


def test_other_parameters_are_left_alone_and_repeated_ones_count_by_their_last_value():
    r = parse_view({"__theme": "dark", "view": "api", "q": ["first", "second"]}, TABS, TASKS, DEFAULT)
    assert r.view.text == "second" and not r.warnings


@pytest.mark.parametrize("view", [
    View("search", "mscoco_task0", "a dog on a sofa & a cat? 100% #1", "", "never", 0.5),
    View("search", "cirr_task7", "", "7:1", "always", -10.0),
    View("walkthrough", "mscoco_task3", "", "9:50", "auto", 0.25),
    View("walkthrough", "mscoco_task0", "ünïcode ☕ query", "", "auto", 0.0),
    View("benchmark"),
])
def test_a_view_written_as_a_link_reads_back_the_same(view):
    qs = view_query(view)
    assert not qs.startswith("?") and set(parse_qs(qs)) <= set(KEYS)
    params = {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}
    r = parse_view(params, TABS, TASKS, DEFAULT)
    assert r.view == view and r.warnings == ()


def test_defaults_are_left_out_of_a_link():
    assert view_query(View("search", "mscoco_task0", "cats")) == "tab=search&task=mscoco_task0&q=cats"
    assert view_query(View("benchmark")) == "tab=benchmark"
    assert "%20" in view_query(View("search", "mscoco_task0", "two words"))  # spaces as %20, not "+"


def test_view_of_makes_the_inputs_canonical():
    # a benchmark query by its id alone: its text is the data's
    assert view_of("search", "mscoco_task0", "a dog", "9:1", "auto", 0) == View("search", "mscoco_task0", "", "9:1")
    assert view_of("search", "t", None, None, "sometimes", float("nan")) == View("search", "t")
    assert view_of("search", "t", "  hi ", "", "never", "junk") == View("search", "t", "hi", "", "never")
    assert view_of("map", "t", "hi") == View("map")


def test_helpers():
    assert parse_bias("-3") == -3.0 and parse_bias("10") == 10.0 and parse_bias("1e9") is None
    assert parse_bias("") is None and parse_bias("0x1") is None
    assert tasks_named("7:1", TASKS) == "cirr_task7" and tasks_named("", TASKS) is None
    assert tasks_named("nope", TASKS) is None

    class Ex:
        def __init__(self, qid, instruction):
            self.qid, self.instruction = qid, instruction

    exs = [Ex("9:1", "Find the image."), Ex("9:2", None)]
    assert instruction_for(exs, "default", "9:1") == "Find the image."
    assert instruction_for(exs, "default", "9:2") == "default"  # evaluated with the task's first
    assert instruction_for(exs, "default", "") == "default" and instruction_for(exs, "default", None) == "default"


def test_links_and_the_walkthrough_view_hold_no_gradio():
    """The link's rules and the walkthrough's rendering are pure: they import without Gradio."""
    import subprocess
    import sys

    code = "import sys, app.links, app.walkthrough_view, app.display; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]
