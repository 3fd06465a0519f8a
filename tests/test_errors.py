"""Error inspection: the analysis functions against the raw per-query table, by hand on edge cases, and the
tab's handlers on a real (tiny, random) evaluation run with --counterfactual."""

from __future__ import annotations

import os

import gradio as gr
import numpy as np
import pandas as pd
import pytest

from analysis.errors import (
    VIEWS,
    available_views,
    error_mask,
    error_table,
    filter_errors,
    query_detail,
    query_label,
)
from app.errors_tab import (
    NO_TABLE,
    build_errors_tab,
    candidate_view,
    error_detail,
    listing,
    selected_query,
    show_detail,
    task_choices,
)
from app.usecases import UserError
from tests.app_fixture import build_services


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    return build_services(tmp_path_factory.mktemp("errors"))


@pytest.fixture(scope="module")
def table(services) -> pd.DataFrame:
    assert services.queries is not None and len(services.queries) == 18
    return services.queries


def _keys(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["pair"].astype(str), df["qid"].astype(str), strict=True))


def _raw_keys(rows) -> set[tuple[str, str]]:
    return {(str(r["pair"]), str(r["qid"])) for r in rows}


def _hand_table() -> pd.DataFrame:
    """q0 direct, gold top-1; q1 reasoned, helped 30 -> 2; q2 reasoned, hurt 3 -> 9; q3 skipped, reasoning would
    have helped 50 -> 4; q4 skipped, would hurt 1 -> 7; q5 no gold in the pool; q6 reasoned, no change 8 -> 8."""
    nan = np.nan
    return pd.DataFrame({
        "pair": ["a", "a", "b", "b", "b", "b", "a"],
        "qid": ["q0", "q1", "q2", "q3", "q4", "q5", "q6"],
        "query_txt": ["red apple", "x" * 200, None, "kite", "dog", "cat", "pizza"],
        "query_img_path": [None, None, "img/q2.png", nan, None, None, None],
        "instruction": ["find it"] * 7,
        "positives": [["1:0"], ["1:1"], ["2:2"], ["2:3"], ["2:4"], ["2:99"], ["1:6", "1:7"]],
        "route": ["direct", "reason", "reason", "direct", "direct", "direct", "reason"],
        "p_emb": [0.9, 0.1, 0.2, 0.7, 0.95, 0.8, 0.3],
        "cot": ["", "think", "hmm", "", "", "", "ok"],
        "cot_tokens": [0, 20, 10, 0, 0, 0, 5],
        "stop_reason": ["direct", "emb", "max_tokens", "direct", "direct", "direct", "emb"],
        "gold_did": ["1:0", "1:1", "2:2", "2:3", "2:4", None, "1:7"],
        "gold_rank": [1.0, 2.0, 9.0, 50.0, 1.0, nan, 8.0],
        "gold_score": [0.9, 0.7, 0.5, 0.2, 0.8, nan, 0.4],
        "gold_rank_direct": [1.0, 30.0, 3.0, 50.0, 1.0, nan, 8.0],
        "gold_score_direct": [0.9, 0.3, 0.6, 0.2, 0.8, nan, 0.41],
        "gold_rank_always": [1.0, 2.0, 9.0, 4.0, 7.0, nan, 8.0],
        "top_dids": [["1:0", "1:5"], ["1:3", "1:1"], ["2:8"], ["2:7"], ["2:4"], ["2:5"], ["1:2", "1:6"]],
        "top_scores": [[0.9, 0.5], [0.75, 0.7], [0.8], [0.6], [0.8], [0.7], [0.6, 0.55]],
    })


# ------------------------------------------------------------------------------------------ analysis, real run
def test_error_table_matches_the_raw_table(table):
    et = error_table(table, k=5)
    assert len(et) == len(table) and list(et["qid"]) == list(table["qid"])
    for (_, raw), (_, row) in zip(table.iterrows(), et.iterrows(), strict=True):
        assert row["gold rank direct"] == raw["gold_rank_direct"] and row["gold rank final"] == raw["gold_rank"]
        assert row["rank change"] == raw["gold_rank_direct"] - raw["gold_rank"]
        assert row["hit@5"] == (raw["gold_rank"] <= 5) == raw["hit@5"]
        assert row["gold rank always reason"] == raw["gold_rank_always"]
        assert row["CoT tokens"] == raw["cot_tokens"] and row["route"] == raw["route"]
        if raw["gold_rank"] == 1:
            assert row["score margin"] == 0.0
        else:
            assert row["score margin"] == pytest.approx(raw["gold_score"] - raw["top_scores"][0])
            assert row["score margin"] < 0
        assert len(row["query"]) <= 90 and row["query"].startswith("[image]") == isinstance(raw["query_img_path"], str)
    assert "hit@10" in error_table(table, k=10)
    assert (error_table(table, k=10)["hit@10"] == table["hit@10"]).all()


@pytest.mark.parametrize("k", [1, 5, 10])
def test_views_keep_exactly_the_right_queries(table, k):
    rows = [r for _, r in table.iterrows()]
    expect = {
        "all": rows,
        "failures only": [r for r in rows if r["gold_rank"] > k],
        "reasoning hurt": [r for r in rows if r["route"] == "reason" and r["gold_rank"] > r["gold_rank_direct"]],
        "reasoning helped": [r for r in rows if r["route"] == "reason" and r["gold_rank"] < r["gold_rank_direct"]],
        "skipped but reasoning would have helped": [
            r for r in rows if r["route"] == "direct" and r["gold_rank_always"] < r["gold_rank_direct"]
            and r["gold_rank_always"] <= k < r["gold_rank_direct"]],
    }
    assert available_views(table) == list(VIEWS)
    for view, want in expect.items():
        got = filter_errors(table, view, None, k)
        assert _keys(got) == _raw_keys(want), view
        assert len(got) == len(want)
        if view == "failures only":
            assert not got[f"hit@{k}"].any()
    # the tiny random model's run has failures, helped and hurt queries: the checks above are not vacuous
    assert len(filter_errors(table, "failures only", None, 5)) > 0
    assert len(filter_errors(table, "reasoning hurt", None, 5)) > 0


def test_pair_filter(table):
    for pair in sorted(set(table["pair"])):
        got = filter_errors(table, "all", pair, 5)
        assert set(got["pair"]) == {pair} and len(got) == (table["pair"] == pair).sum() == 6
        fails = filter_errors(table, "failures only", pair, 5)
        want = table[(table["pair"] == pair) & (table["gold_rank"] > 5)]["qid"]
        assert _keys(fails) == {(pair, str(q)) for q in want}
    assert len(filter_errors(table, "all", "all", 5)) == len(filter_errors(table, "all", None, 5)) == 18
    with pytest.raises(ValueError, match="unknown task 'nope_task9'"):
        filter_errors(table, "all", "nope_task9", 5)


def test_query_detail_of_a_real_query(table):
    raw = table.iloc[0]
    d = query_detail(table, raw["pair"], raw["qid"])
    assert d.gold_did == raw["gold_did"] and d.gold_score == pytest.approx(raw["gold_score"])
    assert d.top1_did == raw["top_dids"][0] and d.top1_score == pytest.approx(raw["top_scores"][0])
    assert d.rank_direct == raw["gold_rank_direct"] and d.rank_final == raw["gold_rank"]
    assert d.rank_always == raw["gold_rank_always"]
    assert d.positives == list(raw["positives"]) and d.instruction == raw["instruction"]
    assert d.margin == (0.0 if raw["gold_rank"] == 1 else pytest.approx(raw["gold_score"] - raw["top_scores"][0]))
    assert query_detail(table, None, raw["qid"]).qid == raw["qid"]  # qids are unique here: no pair needed
    with pytest.raises(ValueError, match="no query with id 'nope'"):
        query_detail(table, raw["pair"], "nope")
    other = next(p for p in table["pair"] if p != raw["pair"])
    with pytest.raises(ValueError, match="in task"):
        query_detail(table, other, raw["qid"])


# ------------------------------------------------------------------------------------------ analysis, by hand
def test_views_by_hand():
    t = _hand_table()
    views = {v: list(filter_errors(t, v, None, 5)["qid"]) for v in VIEWS}
    assert views["all"] == [f"q{i}" for i in range(7)]
    assert views["failures only"] == ["q2", "q3", "q6"]  # q5 has no gold in the pool: not a failure
    assert views["reasoning hurt"] == ["q2"]
    assert views["reasoning helped"] == ["q1"]
    assert views["skipped but reasoning would have helped"] == ["q3"]
    assert list(filter_errors(t, "failures only", "a", 5)["qid"]) == ["q6"]
    assert list(filter_errors(t, "failures only", None, 1)["qid"]) == ["q1", "q2", "q3", "q6"]
    assert list(error_mask(t, "reasoning hurt", 5)) == [False, False, True, False, False, False, False]


def test_error_table_by_hand_with_no_gold():
    et = error_table(_hand_table(), k=5).set_index("qid")
    assert et.loc["q0", "score margin"] == 0.0 and et.loc["q0", "rank change"] == 0
    assert et.loc["q1", "score margin"] == pytest.approx(0.7 - 0.75) and et.loc["q1", "rank change"] == 28
    assert et.loc["q2", "rank change"] == -6 and not et.loc["q2", "hit@5"]
    assert np.isnan(et.loc["q5", "gold rank final"]) and np.isnan(et.loc["q5", "score margin"])
    assert np.isnan(et.loc["q5", "rank change"]) and not et.loc["q5", "hit@5"]
    assert et.loc["q1", "query"].endswith("…") and len(et.loc["q1", "query"]) == 80
    assert et.loc["q2", "query"] == "[image only]" and et.loc["q3", "query"] == "kite"  # NaN image path: text only
    assert query_label("  a  dog ", "x.png") == "[image] a dog"


def test_unknown_view_k_and_missing_counterfactual():
    t = _hand_table()
    with pytest.raises(ValueError, match="unknown view 'nonsense'.*failures only"):
        filter_errors(t, "nonsense", None, 5)
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        filter_errors(t, "all", None, 0)
    plain = t.drop(columns=["gold_rank_always"])
    assert "skipped but reasoning would have helped" not in available_views(plain)
    assert "gold rank always reason" not in error_table(plain)
    with pytest.raises(ValueError, match="--counterfactual"):
        filter_errors(plain, "skipped but reasoning would have helped", None, 5)
    d = query_detail(plain, "b", "q5")
    assert d.rank_always is None and d.gold_did is None and np.isnan(d.margin) and d.top1_did == "2:5"
    assert filter_errors(t.iloc[:0], "failures only", None, 5).empty


# ------------------------------------------------------------------------------------------ handlers
def test_detail_names_gold_and_top1_with_existing_images(services, table):
    raw = table[table["pair"] == "cirr_task7"].iloc[0]  # image + text query over image candidates
    det = error_detail(services, raw["pair"], raw["qid"], 5)
    assert det.query.qid == raw["qid"] and det.query_image and os.path.isfile(det.query_image)
    assert det.gold[0].did == raw["gold_did"] and det.gold[0].gold and det.gold[0].rank == int(raw["gold_rank"])
    assert {c.did for c in det.gold} == set(raw["positives"])
    assert det.top1 is not None and det.top1.did == raw["top_dids"][0] and det.top1.rank == 1
    assert det.top1.gold == (raw["top_dids"][0] in set(raw["positives"]))
    for c in [*det.gold, det.top1]:
        assert c.found and c.image and os.path.isfile(c.image) and not c.note
    out = show_detail(services, raw["pair"], raw["qid"], 5)
    header, gold_md, top_md = out[2], out[6], out[8]
    assert out[0] == "" and f"`{raw['qid']}`" in header and raw["query_txt"] in header
    assert f"`{raw['gold_did']}`" in gold_md and f"`{raw['top_dids'][0]}`" in top_md
    assert "without reasoning" in header and "reasoning forced on" in header and "margin" in header


def test_text_candidates_and_detail_wording(services, table):
    raw = table[table["pair"] == "webqa_task1"].iloc[1]  # text -> text
    det = error_detail(services, raw["pair"], raw["qid"], 5)
    assert det.query_image is None and det.gold[0].text and det.gold[0].image is None
    assert det.gold[0].text == services.tasks["webqa_task1"].candidate(raw["gold_did"]).text
    md = show_detail(services, raw["pair"], raw["qid"], 5)[2]
    if raw["gold_rank"] == 1:
        assert "is the top-1" in md
    else:
        assert "below" in md


def test_unknown_qid_and_missing_candidate_give_messages(services, table):
    with pytest.raises(UserError, match="no query with id 'zz:1'"):
        error_detail(services, "all", "zz:1", 5)
    with pytest.raises(UserError, match="Pick a query"):
        error_detail(services, None, "  ", 5)
    out = show_detail(services, "all", "zz:1", 5)
    assert "no query with id" in out[0]
    missing = candidate_view(services, "mscoco_task0", "9:12345", "gold", gold=True)
    assert not missing.found and "not in the local pool" in missing.note
    assert "not loaded" in candidate_view(services, "ghost_task1", "1:1", "top-1").note
    # a table whose gold id is not in the pool (pool changed since the run): a note, not a crash
    raw = table.iloc[3]
    services.queries = table.assign(gold_did=table["gold_did"].where(table.index != 3, "9:404"))
    try:
        det = error_detail(services, raw["pair"], raw["qid"], 5)
        assert det.gold[0].did == "9:404" and not det.gold[0].found and det.gold[0].note
        assert "not in the local pool" in show_detail(services, raw["pair"], raw["qid"], 5)[6]
    finally:
        services.queries = table
    with pytest.raises(UserError, match="unknown view"):
        listing(services, "bad view", "all", 5)
    with pytest.raises(UserError, match="k must be"):
        listing(services, "all", "all", 0)


def test_listing_and_selection(services, table):
    shown = listing(services, "failures only", "all", 5)
    failures = [r for _, r in table.iterrows() if r["gold_rank"] > 5]
    assert set(shown["hit@5"]) == {"miss"} and _keys(shown) == _raw_keys(failures)
    assert selected_query(services, "failures only", "all", 5, [1, 3]) == (shown["pair"].iloc[1], shown["qid"].iloc[1])
    row = list(shown.iloc[2])
    assert selected_query(services, "all", "all", 5, [0, 0], row) == (shown["pair"].iloc[2], shown["qid"].iloc[2])
    with pytest.raises(UserError, match="pick a row again"):
        selected_query(services, "failures only", "all", 5, [999, 0])
    choices = task_choices(services)
    assert choices[0] == ("all tasks", "all") and {v for _, v in choices[1:]} == set(table["pair"])


def test_tab_builds_with_and_without_analysis(services, tmp_path_factory):
    with gr.Blocks() as demo:
        with gr.Tab("Error inspection"):
            build_errors_tab(services)
    frames = [b for b in demo.blocks.values() if isinstance(b, gr.Dataframe)]
    assert len(frames) == 1 and len(frames[0].value["data"]) == len(listing(services, "failures only", "all", 5))
    dropdowns = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown)]
    assert any(d.label == "Show" and d.value == "failures only" for d in dropdowns)

    bare = build_services(tmp_path_factory.mktemp("errors_bare"), with_analysis=False)
    assert bare.queries is None
    with gr.Blocks() as demo2:
        with gr.Tab("Error inspection"):
            build_errors_tab(bare)
    texts = [b.value for b in demo2.blocks.values() if isinstance(b, gr.Markdown)]
    assert texts == [NO_TABLE] and "--counterfactual" in NO_TABLE and "--analysis" in NO_TABLE
    with pytest.raises(UserError, match="No per-query table"):
        listing(bare, "all", "all", 5)
    assert "No per-query table" in show_detail(bare, None, "9:100", 5)[0]


def test_a_bad_filter_is_a_warning_that_keeps_the_listing(services):
    with gr.Blocks() as demo:
        build_errors_tab(services)
    refresh = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "refresh")
    shown, summary = refresh("failures only", "all", 5)
    assert len(shown) and "queries match" in summary
    with pytest.warns(UserWarning, match="k must be"):
        kept = refresh("failures only", "all", 0)
    assert kept == (gr.skip(), gr.skip())


def test_the_map_filters_the_table_and_the_table_lights_the_map(services, table):
    from app.map_tab import MapLink

    with gr.Blocks() as demo:
        link = MapLink.create()
        build_errors_tab(services, link)
    fns = {getattr(f.fn, "__name__", ""): f.fn for f in demo.fns.values()}
    keys = [[str(p), str(q)] for p, q in zip(table["pair"][:3], table["qid"][:3], strict=True)]
    shown, summary = fns["refresh"]("all", "all", 5, {"keys": keys, "rev": 1})  # what the map sent
    assert sorted(map(list, zip(shown["pair"], shown["qid"], strict=True))) == sorted(keys)
    assert "among the **3** queries selected on the embedding map" in summary
    sent = fns["send_to_map"]("all", "all", 5, {"keys": keys[:2]})  # "Show these on the map"
    assert sorted(sent["keys"]) == sorted(keys[:2]) and sent["what"] == "all, all tasks"
    again = fns["send_to_map"]("all", "all", 5, {"keys": keys[:2]})
    assert again["rev"] != sent["rev"]  # a second click is news to the map, even with the same rows
    with pytest.warns(UserWarning, match="lists no query"):
        assert fns["send_to_map"]("all", "all", 5, {"keys": [["nowhere", "0"]]}) == gr.skip()
    assert fns["send_to_map"]("all", "all", 5, None)["keys"]  # no map filter: every listed query
