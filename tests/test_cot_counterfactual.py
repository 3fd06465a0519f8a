"""The chain of thought as something to experiment with (issue 14), without the UI: the routing bias as a
control of search (P(<|emb|>) before and after it), and a query re-embedded after a chain of thought edited by
hand, blanked or borrowed from another benchmark query, against the search it came from.

On the tiny random TRACE-mini of the other app tests and its real evaluation (`tests.app_fixture`): its
first-step margins are what the model computes, and the evaluation table is the oracle for the gold ranks.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from app.display import route_words
from app.search_tab import cot_edit_markdown, search_api
from app.services import Services
from app.usecases import UserError, another_cot, edit_cot, search
from tests.app_fixture import build_services
from trace_core.encoder import p_emb_with_bias, prefers_direct

TASK = "mscoco_task0"


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    return build_services(tmp_path_factory.mktemp("cot"))


# ------------------------------------------------------------------------------------------ the formula
def test_p_emb_with_bias_is_the_softmax_after_adding_the_bias_to_the_emb_logit():
    torch.manual_seed(0)
    logits = torch.randn(50) * 3  # [V]
    emb = 7
    p = float(torch.softmax(logits, -1)[emb])
    for b in (-6.0, -0.5, 0.0, 0.5, 2.0, 9.0):
        biased = logits.clone()
        biased[emb] += b
        assert p_emb_with_bias(p, b) == pytest.approx(float(torch.softmax(biased.double(), -1)[emb]), rel=1e-6)
    assert p_emb_with_bias(p, 0.0) == pytest.approx(p)
    assert isinstance(p_emb_with_bias(p, 1.0), float)
    # vectorised like prefers_direct: arrays of probabilities and biases, broadcast
    ps = np.array([0.001, 0.2, 0.5, 0.9])
    out = p_emb_with_bias(ps, np.array([2.0, -2.0, 0.0, 1.0]))
    assert out.shape == (4,) and out[2] == pytest.approx(0.5)
    assert out[0] > ps[0] and out[1] < ps[1] and out[3] > ps[3]
    assert np.all(np.diff(p_emb_with_bias(0.3, np.linspace(-5, 5, 11))) > 0)  # monotone in the bias
    # no overflow or 0/0 at the ends: p = 0 and p = 1 stay put, a huge bias saturates, NaN stays NaN
    with np.errstate(all="raise"):
        assert p_emb_with_bias(0.0, 800.0) == 0.0 and p_emb_with_bias(1.0, -800.0) == 1.0
        assert p_emb_with_bias(0.5, 800.0) == 1.0 and p_emb_with_bias(0.5, -800.0) == 0.0
    assert math.isnan(p_emb_with_bias(float("nan"), 1.0))


# ------------------------------------------------------------------------------------------ the bias in search
def test_the_routing_bias_moves_mode_auto_across_the_models_own_margin(services):
    free = search(services, TASK, "a dog on a sofa", None, None, "auto", 3)
    m, p = free.result.emb_margin, free.result.p_emb
    assert free.routing_bias == 0.0 and free.result.route == ("direct" if m > 0 else "reason")
    # just either side of -margin: the route flips exactly where prefers_direct says
    for bias in (-m + 0.25, -m - 0.25, 60.0, -60.0):
        res = search(services, TASK, "a dog on a sofa", None, None, "auto", 3, routing_bias=bias)
        want = "direct" if prefers_direct(m, bias) else "reason"
        assert res.result.route == want, bias
        assert res.routing_bias == bias and res.result.emb_margin == pytest.approx(m, abs=1e-5)
        assert res.result.p_emb == pytest.approx(p, rel=1e-5)  # the record stays the unbiased probability
        assert res.p_emb_biased == pytest.approx(p_emb_with_bias(p, bias), rel=1e-5)
    assert search(services, TASK, "a dog on a sofa", None, None, "auto", 3, routing_bias=60).result.route == "direct"
    assert search(services, TASK, "a dog on a sofa", None, None, "auto", 3, routing_bias=-60).result.route == "reason"
    # a forced mode ignores it
    assert search(services, TASK, "a dog", None, None, "never", 3, routing_bias=-60).result.route == "direct"
    assert search(services, TASK, "a dog", None, None, "always", 3, routing_bias=60).result.route == "reason"
    for bad in ("x", float("nan"), float("inf"), True, [1]):
        with pytest.raises(UserError, match="routing_bias must be a finite number"):
            search(services, TASK, "a dog", None, None, "auto", 3, routing_bias=bad)


def test_the_json_and_the_badge_give_p_emb_before_and_after_the_bias(services):
    plain = search(services, TASK, "a dog on a sofa", None, None, "auto", 3)
    bias = 2.0 - plain.result.emb_margin  # enough to tip it to direct
    tipped = search(services, TASK, "a dog on a sofa", None, None, "auto", 3, routing_bias=bias)
    data = json.loads(json.dumps(tipped.to_json(services.fingerprint)))
    assert data["routing_bias"] == pytest.approx(bias) and data["route"] == "direct"
    assert data["p_emb"] == pytest.approx(plain.result.p_emb, rel=1e-5)
    assert data["p_emb_with_bias"] == pytest.approx(p_emb_with_bias(plain.result.p_emb, bias), rel=1e-5)
    assert data["p_emb_with_bias"] > data["p_emb"]
    zero = plain.to_json(services.fingerprint)
    assert zero["routing_bias"] == 0.0 and zero["p_emb_with_bias"] == pytest.approx(zero["p_emb"])
    # the badge: P before -> after, and the route named as the bias's doing when it flipped it
    words = route_words(tipped.result)
    assert (f"P(<|emb|> first) = {plain.result.p_emb:.2f} → {data['p_emb_with_bias']:.2f} with bias {bias:+g}"
            in words)
    assert ("because of your routing bias" in words) == (plain.result.route == "reason")
    assert "→" not in route_words(plain.result) and "routing bias" not in route_words(plain.result)
    half = search(services, TASK, "a dog on a sofa", None, None, "auto", 3, routing_bias=2.5)
    assert "with bias +2.5" in route_words(half.result)


def test_the_walkthroughs_first_step_gives_p_emb_before_and_after_the_bias(services):
    from app.walkthrough_tab import decision_markdown
    from trace_core.explain import first_step
    from trace_core.records import Query

    query = Query(text="a dog on a sofa", instruction=services.tasks[TASK].instructions[0])
    plain = first_step(services.encoder, query, "auto", 0.0)
    biased = first_step(services.encoder, query, "auto", 3.0)
    assert biased.step.p_emb == pytest.approx(plain.step.p_emb)  # the record is the unbiased probability
    after = p_emb_with_bias(plain.step.p_emb, 3.0)
    assert f"**{plain.step.p_emb:.4f}**" in decision_markdown(biased)
    assert f" → {after:.4f} with the bias" in decision_markdown(biased)
    assert "with the bias |" not in decision_markdown(plain)


# ------------------------------------------------------------------------------------------ the CoT by hand
def _evaluated_row(services: Services, moved: bool = True):
    """A benchmark query of the evaluation, preferably one whose gold moves between its auto and direct
    embeddings (gold_rank vs gold_rank_direct)."""
    t = services.queries
    t = t[t["pair"] == TASK]
    rows = t[t["gold_rank"] != t["gold_rank_direct"]] if moved else t
    return (rows if len(rows) else t).iloc[0]


def test_a_blank_cot_puts_the_gold_where_the_direct_route_does(services):
    row = _evaluated_row(services)
    q = next(q for q in services.tasks[TASK].queries if q.qid == row["qid"])
    before = search(services, TASK, q.text, None, row["instruction"], "auto", 5, q.qid)
    assert before.gold_rank == int(row["gold_rank"])  # the search is the evaluation's auto run
    e = edit_cot(services, before, "")
    assert e.after.result.route == "direct" and e.after.result.cot == ""
    assert (e.gold_before, e.gold_after) == (int(row["gold_rank"]), int(row["gold_rank_direct"]))
    assert e.k == 5 and e.kept == len({h.did for h in before.hits} & {h.did for h in e.after.hits})
    direct = search(services, TASK, q.text, None, row["instruction"], "never", 5, q.qid)
    assert [h.did for h in e.after.hits] == [h.did for h in direct.hits]  # same ranking as reasoning off
    md = cot_edit_markdown(e)
    assert f"Gold rank **{e.gold_before} → {e.gold_after}** with a blank CoT (embedded at once)" in md
    assert f"**{e.kept}/5** of the search's top-5 stayed" in md


def test_an_edited_cot_on_a_free_query_says_how_many_of_the_top_k_stayed(services):
    before = search(services, TASK, "a dog on a sofa", None, None, "never", 4)
    e = edit_cot(services, before, "  It shows a brown dog asleep on a red sofa.  ")
    assert e.after.result.cot == "It shows a brown dog asleep on a red sofa." and e.after.result.route == "reason"
    assert e.gold_before is None and e.gold_after is None and e.k == 4
    assert e.after.query.text == "a dog on a sofa"  # the same query, re-embedded
    assert float(e.after.result.embedding @ before.result.embedding) < 0.9999  # the thought moved it
    kept = len({h.did for h in before.hits} & {h.did for h in e.after.hits})
    assert e.kept == kept
    md = cot_edit_markdown(e)
    assert "Free query: there is no gold to compare" in md and f"**{kept}/4**" in md and "edited CoT" in md


def test_edit_mistakes_are_user_errors(services, tmp_path):
    with pytest.raises(UserError, match="Search first"):
        edit_cot(services, None, "a thought")
    before = search(services, TASK, "a dog", None, None, "never", 3)
    with pytest.raises(UserError, match="too long"):
        edit_cot(services, before, "x" * 5000)
    with pytest.raises(UserError, match="string"):
        edit_cot(services, before, None)
    # a model that never reasons (the real zero-shot baseline) cannot be fed a chain of thought
    import trace_core

    baseline = Services.load("minilm-bridge", services.root, "test", str(tmp_path / "cache"),
                             encoder=trace_core.load_model("minilm-bridge"), embedding_map=False)
    res = search(baseline, TASK, "a dog", None, None, "auto", 3, routing_bias=-50)
    assert res.result.route == "direct" and res.p_emb_biased == 1.0  # no first step to bias
    with pytest.raises(UserError, match="never reasons"):
        edit_cot(baseline, res, "a thought")


def test_another_querys_cot_is_the_next_non_empty_one_of_the_task(services):
    table = services.queries
    queries = [q.qid for q in services.tasks[TASK].queries]
    # the shipped evaluation's own chains: the first non-empty one in the task's order (not the query's own)
    own = {r.qid: r.cot.strip() for r in table[table["pair"] == TASK].itertuples() if r.cot.strip()}
    if own:
        first = next(q for q in queries if q in own)
        b = another_cot(services, TASK, None)
        assert (b.qid, b.cot) == (first, own[first])
    # deterministic selection on a table whose chains are set by hand: the next qid, wrapping round
    cots = {queries[1]: "", queries[2]: "second thought", queries[4]: "  fourth thought ", queries[0]: "   "}
    t = table.copy()
    t["cot"] = [cots.get(q, "") if p == TASK else "x" for p, q in zip(t["pair"], t["qid"], strict=True)]
    s = dataclasses.replace(services, queries=t)
    assert another_cot(s, TASK, None).qid == queries[2]  # a free query: the first
    assert another_cot(s, TASK, queries[0]).qid == queries[2]
    assert another_cot(s, TASK, queries[2]) == another_cot(s, TASK, queries[3])  # never its own: the next
    assert another_cot(s, TASK, queries[3]).cot == "fourth thought"
    assert another_cot(s, TASK, queries[4]).qid == queries[2]  # wraps round
    hit = next(q for q in services.tasks[TASK].queries if q.qid == queries[2])
    assert another_cot(s, TASK, None).query == hit.text
    # and it is what the query is then embedded after
    before = search(s, TASK, "a dog on a sofa", None, None, "never", 3)
    e = edit_cot(s, before, another_cot(s, TASK, None).cot)
    assert e.after.result.cot == "second thought"
    only = t.assign(cot=[("only" if q == queries[2] else "") for q in t["qid"]])
    with pytest.raises(UserError, match="No other query"):
        another_cot(dataclasses.replace(services, queries=only), TASK, queries[2])
    with pytest.raises(UserError, match="No evaluation"):
        another_cot(dataclasses.replace(services, queries=None), TASK, None)
    with pytest.raises(UserError, match="unknown task"):
        another_cot(services, "nope_task3", None)


# ------------------------------------------------------------------------------------------ the API
def test_the_search_api_takes_the_routing_bias_as_its_last_parameter(services):
    import inspect

    import gradio as gr

    from app.ui import build_app

    m = search(services, TASK, "a dog on a sofa", None, None, "auto", 3).result.emb_margin
    old = search_api(services, "a dog on a sofa", None, TASK, "auto", 3, 0, None)  # an older positional call
    assert old["routing_bias"] == 0.0 and old["route"] == ("direct" if m > 0 else "reason")
    up = search_api(services, "a dog on a sofa", None, TASK, "auto", 3, 0, None, 60.0)
    down = search_api(services, "a dog on a sofa", None, TASK, "auto", 3, 0, None, -60.0)
    assert (up["route"], down["route"]) == ("direct", "reason")
    assert up["routing_bias"] == 60.0 and up["p_emb_with_bias"] == pytest.approx(1.0)
    assert up["p_emb"] == pytest.approx(old["p_emb"], rel=1e-5)
    with pytest.raises(UserError, match="routing_bias"):
        search_api(services, "a dog", None, TASK, "auto", 3, 0, None, "lots")
    with pytest.raises(UserError, match="routing_bias"):  # refused with a CoT too, where it is unused
        search_api(services, "a dog", None, TASK, "auto", 3, 0, "", float("nan"))
    assert search_api(services, "a dog", None, TASK, "auto", 3, 0, "", 5.0)["route"] == "direct"
    # the endpoint: routing_bias after cot, with a default, and a mistake is a gr.Error
    demo = build_app(services)
    fn = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "api_search")
    params = list(inspect.signature(fn).parameters)
    assert params[-2:] == ["cot", "routing_bias"]
    assert inspect.signature(fn).parameters["routing_bias"].default == 0.0
    assert fn("a dog on a sofa", None, TASK, "auto", 3, 0, None, 60.0)["route"] == "direct"
    with pytest.raises(gr.Error, match="routing_bias"):
        fn("a dog", None, TASK, "auto", 3, 0, None, "lots")
