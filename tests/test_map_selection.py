"""Sets of points on the embedding map (analysis.map_selection), each checked against an oracle: neighbours
against a brute-force cosine over every pair, rows against the map and the per-query table by hand, exports read
back from disk."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.embedding_map import (
    MapConfig,
    MapSample,
    PoolPoints,
    QueryPoints,
    collect,
    sample_of,
    unit_rows,
)
from analysis.errors import filter_errors, query_key_mask
from analysis.map_selection import (
    EXPORT_COLUMNS,
    Lit,
    SelectionError,
    check_points,
    gold_ranks,
    kinds_mask,
    nearest,
    neighbours,
    query_keys,
    query_points,
    selection_rows,
    text_matches,
    write_csv,
    write_json,
)


def _points() -> pd.DataFrame:
    """Three candidates, then two queries twice (direct, final), with coordinates."""
    return pd.DataFrame({
        "point": range(7),
        "kind": ["candidate"] * 3 + ["query (direct)"] * 2 + ["query (final)"] * 2,
        "id": ["1:a", "1:b", "1:c", "1:q0", "1:q1", "1:q0", "1:q1"],
        "pair": ["ds_task0"] * 7,
        "dataset": ["ds"] * 7,
        "modality": ["text"] * 7,
        "route": ["candidate"] * 3 + ["direct", "reason", "direct", "reason"],
        "hit": ["candidate"] * 3 + ["hit", "miss", "hit", "hit"],
        "label": ["a red kite", "a blue Kite", "a dog", "kite?", "dog?", "kite?", "dog?"],
        "image": [None, "img/b.png", None, None, None, None, None],
        "x": np.arange(7, dtype=float), "y": -np.arange(7, dtype=float),
    })


def _queries() -> pd.DataFrame:
    return pd.DataFrame({"pair": ["ds_task0", "ds_task0"], "qid": ["1:q0", "1:q1"], "gold_rank": [1.0, 3.0],
                         "gold_rank_direct": [1.0, 9.0]})


def test_check_points_accepts_point_numbers_and_refuses_anything_else():
    assert check_points([3, 1, 3.0, 0], 5) == [0, 1, 3]
    assert check_points(None, 5) == [] and check_points([], 5) == []
    for bad, words in (([5], "not on the map"), ([-1], "not on the map"), (["2"], "not a point number"),
                       ([1.5], "not a point number"), ([True], "not a point number"), ("0,1", "a list")):
        with pytest.raises(SelectionError, match=words):
            check_points(bad, 5)


def test_nearest_agrees_with_brute_force_cosine():
    rng = np.random.default_rng(0)
    vectors = unit_rows(rng.normal(size=(200, 16)))
    query = rng.normal(size=16)
    among = rng.random(200) > 0.3
    rows, sims = nearest(vectors, query * 7.0, 10, among)  # the query's length does not matter
    cos = vectors @ (query / np.linalg.norm(query))
    expected = sorted(np.flatnonzero(among), key=lambda r: (-cos[r], r))[:10]
    assert rows.tolist() == expected
    assert sims == pytest.approx(cos[expected], abs=1e-5)
    assert list(sims) == sorted(sims, reverse=True)
    # more than there are: every allowed row, best first
    assert len(nearest(vectors, query, 1000, among)[0]) == among.sum()


def test_neighbours_leave_the_point_out_and_are_found_in_embedding_space_not_on_the_map():
    # point 0 and point 2 are near in embedding space; point 1 is the same as 0 but "far" on purpose
    vectors = unit_rows(np.array([[1, 0, 0], [-1, 0.1, 0], [0.9, 0.1, 0], [0, 1, 0]], dtype=np.float32))
    rows, sims = neighbours(vectors, 0, 2)
    assert rows.tolist() == [2, 3] and 0 not in rows
    assert sims[0] == pytest.approx(float(vectors[0] @ vectors[2]))
    with pytest.raises(SelectionError):
        neighbours(vectors, 9, 2)
    with pytest.raises(SelectionError, match="dimensions"):
        nearest(vectors, np.ones(5), 2)
    with pytest.raises(SelectionError, match="empty"):
        nearest(vectors, np.zeros(3), 2)


def test_text_matches_labels_and_ids_case_insensitively():
    pts = _points()
    assert text_matches(pts, "KITE", 10) == [0, 1, 3, 5]
    assert text_matches(pts, "kite", 10, kinds_mask(pts)) == [0, 1, 5]  # no direct query points
    assert text_matches(pts, "1:q1", 10) == [4, 6]
    assert text_matches(pts, "kite", 2) == [0, 1]
    assert text_matches(pts, "zebra", 10) == []
    with pytest.raises(SelectionError, match="Type"):
        text_matches(pts, "   ", 10)


def test_rows_carry_kind_pair_label_route_gold_rank_and_hit():
    pts = _points()
    rows = selection_rows(pts, [6, 0, 3], _queries(), similarity=[1.0, 0.5, 0.25])
    assert list(rows.columns) == [*EXPORT_COLUMNS, "similarity"]
    assert rows["point"].tolist() == [6, 0, 3]  # the order given
    assert rows["kind"].tolist() == ["query (final)", "candidate", "query (direct)"]
    assert rows["route"].tolist() == ["reason", "", "direct"] and rows["hit"].tolist() == ["hit", "", "hit"]
    assert rows["gold rank"].iloc[0] == 3.0 and np.isnan(rows["gold rank"].iloc[1]) and rows["gold rank"].iloc[2] == 1
    assert rows[["x", "y"]].to_numpy().tolist() == [[6.0, -6.0], [0.0, -0.0], [3.0, -3.0]]
    # a direct point's gold rank is the direct one
    assert gold_ranks(pts, _queries()).tolist()[3:] == [1.0, 9.0, 1.0, 3.0]
    assert gold_ranks(pts, None).isna().all()


def test_queries_of_a_selection_and_the_points_of_queries():
    pts = _points()
    assert query_keys(pts, [0, 6, 4, 3]) == [("ds_task0", "1:q1"), ("ds_task0", "1:q0")]
    assert query_keys(pts, [0, 1]) == []
    assert query_points(pts, [("ds_task0", "1:q1")]) == [4, 6]
    assert query_points(pts, [["ds_task0", "1:q1"], ["other", "1:q0"]]) == [4, 6]  # unknown keys left out
    assert Lit("selection", [0, 1, 3, 5], "x").counts(pts) == "2 candidates, 2 query points (1 query)"


def test_exports_read_back_with_every_row(tmp_path):
    rows = selection_rows(_points(), [1, 4], _queries())
    csv = pd.read_csv(write_csv(rows, tmp_path / "sel.csv"), keep_default_na=False)
    assert csv["id"].tolist() == ["1:b", "1:q1"] and csv.columns.tolist() == EXPORT_COLUMNS
    assert csv["gold rank"].astype(str).tolist() == ["", "9.0"]  # a candidate has no gold rank: an empty cell
    doc = json.loads(write_json(rows, tmp_path / "sel.json", {"what": "test"}).read_text())
    assert doc["about"] == {"what": "test"}
    assert [r["id"] for r in doc["rows"]] == ["1:b", "1:q1"]
    assert doc["rows"][0]["gold rank"] is None and doc["rows"][1]["gold rank"] == 9.0
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_the_map_says_how_it_sampled_a_large_pool():
    rng = np.random.default_rng(1)
    pool = PoolPoints("big_task0", [f"9:{i}" for i in range(50)], rng.normal(size=(50, 4)), ["image"] * 50,
                      ["x"] * 50, [None] * 50)
    q = QueryPoints("big_task0", ["9:q0", "9:q1"], rng.normal(size=(2, 4)), rng.normal(size=(2, 4)), ["text"] * 2,
                    ["direct", "reason"], ["a", "b"], [None] * 2, [True, False], [True, True])
    table, _ = collect([pool], [q], {"9:1"}, MapConfig(max_candidates=10))
    sample = sample_of([pool], [q], table)
    assert sample == MapSample(50, 10, 2, 2)
    assert "Showing 14 of 54 points" in sample.sentence() and "every gold candidate" in sample.sentence()
    assert MapSample(5, 5, 1, 1).sentence() == "Showing all 7 points (no sampling)."


def test_the_error_table_filtered_to_the_keys_of_a_selection():
    table = pd.DataFrame({"pair": ["a", "a", "b"], "qid": ["1", "2", "1"], "query_txt": ["x", "y", "z"],
                          "query_img_path": [None] * 3, "route": ["direct", "reason", "reason"],
                          "cot_tokens": [0, 3, 4], "gold_rank_direct": [1.0, 2.0, 3.0], "gold_rank": [1.0, 5.0, 1.0],
                          "gold_score": [0.9, 0.5, 0.8], "top_scores": [[0.9], [0.7], [0.8]]})
    assert query_key_mask(table, [("b", "1"), ("a", "9")]).tolist() == [False, False, True]
    kept = filter_errors(table, "all", None, 5, only=[("a", "2"), ("b", "1")])
    assert list(zip(kept["pair"], kept["qid"], strict=True)) == [("a", "2"), ("b", "1")]
    assert filter_errors(table, "reasoning hurt", None, 5, only=[("a", "2"), ("b", "1")])["qid"].tolist() == ["2"]
    assert filter_errors(table, "all", None, 5, only=[]).empty
