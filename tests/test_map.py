"""The embedding map: points, UMAP cache, placement of new queries, and the tab's handlers."""

from __future__ import annotations

import json

import gradio as gr
import numpy as np
import pandas as pd
import pytest

import analysis.embedding_map as em
from analysis.embedding_map import EmbeddingMap, MapConfig, PoolPoints, QueryPoints, collect, load_or_build
from app.map_tab import build_map_tab, pick, place_query
from app.services import Services
from app.usecases import UserError, search
from tests.app_fixture import build_services


def _unit(rng, n, d=8):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pools(rng):
    a = _unit(rng, 6)
    b = np.concatenate([a[:2], _unit(rng, 3)])  # two candidates shared with pool a, same vectors
    return [PoolPoints("ds_task0", [f"1:{i}" for i in range(6)], a, ["image"] * 6, [f"a{i}" for i in range(6)],
                       [None] * 6),
            PoolPoints("ds_task3", ["1:0", "1:1", "1:7", "1:8", "1:9"], b, ["text"] * 5, list("vwxyz"), [None] * 5)]


def _queries(rng):
    d = _unit(rng, 3)
    return [QueryPoints("ds_task0", ["1:q0", "1:q1", "1:q2"], d, _unit(rng, 3), ["text"] * 3,
                        ["direct", "reason", "reason"], ["q0", "q1", "q2"], [None] * 3, [True, False, False],
                        [True, True, False])]


def test_points_dedupe_candidates_and_put_each_query_twice():
    rng = np.random.default_rng(0)
    table, matrix = collect(_pools(rng), _queries(rng))
    cand = table[table["kind"] == "candidate"]
    assert sorted(cand["id"]) == sorted({f"1:{i}" for i in range(6)} | {"1:7", "1:8", "1:9"})
    assert (table["kind"] == "query (direct)").sum() == 3 and (table["kind"] == "query (final)").sum() == 3
    assert matrix.shape == (len(table), 8) and list(table["point"]) == list(range(len(table)))
    q1 = table[(table["id"] == "1:q1")].set_index("kind")
    assert q1.loc["query (direct)", "hit"] == "miss" and q1.loc["query (final)", "hit"] == "hit"


def test_large_pools_are_sampled_keeping_the_gold():
    rng = np.random.default_rng(1)
    pool = PoolPoints("big_task0", [f"9:{i}" for i in range(50)], _unit(rng, 50), ["image"] * 50, ["x"] * 50,
                      [None] * 50)
    keep = {"9:3", "9:41"}
    table, _ = collect([pool], [], keep, MapConfig(max_candidates=10))
    assert len(table) == 10 and keep <= set(table["id"])
    again, _ = collect([pool], [], keep, MapConfig(max_candidates=10))
    assert list(again["id"]) == list(table["id"])  # the sample is fixed


def test_map_is_built_once_then_loaded_and_rebuilt_when_anything_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    pools, queries = _pools(rng), _queries(rng)
    model = {"model_id": "m", "revision": "r"}
    calls = []
    real = em.fit_umap

    def counting(matrix, config):
        calls.append(len(matrix))
        return real(matrix, config)

    monkeypatch.setattr(em, "fit_umap", counting)
    first = load_or_build(pools, queries, model, tmp_path)
    assert calls == [len(first.points)] and np.isfinite(first.xy).all()
    second = load_or_build(pools, queries, model, tmp_path)
    assert len(calls) == 1 and np.array_equal(second.xy, first.xy)  # loaded from the cache
    load_or_build(pools, queries, {"model_id": "m", "revision": "other"}, tmp_path)
    assert len(calls) == 2  # another model: another map
    saved = queries[0].final.copy()
    queries[0].final[0] = -queries[0].final[0]
    load_or_build(pools, queries, model, tmp_path)
    assert len(calls) == 3  # other query embeddings: rebuilt
    queries[0].final[:] = saved
    path = tmp_path / f"embedding-map-{first.fingerprint}.parquet"
    path.write_bytes(b"not parquet")
    repaired = load_or_build(pools, queries, model, tmp_path)
    assert len(calls) == 4 and repaired.fingerprint == first.fingerprint  # a corrupt cache file is rebuilt
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written is left behind


def test_a_new_query_is_placed_at_the_weighted_mean_of_its_neighbours():
    rng = np.random.default_rng(3)
    table, _ = collect(_pools(rng), [])
    table["x"], table["y"] = rng.normal(size=len(table)), rng.normal(size=len(table))
    emap = EmbeddingMap(table, "fp")
    dids, scores = ["1:2", "1:7", "1:4"], [0.9, 0.85, 0.5]
    w = np.exp((np.array(scores) - 0.9) / 0.05)
    rows = [table.index[table["id"] == d][0] for d in dids]
    expected = (table.loc[rows, ["x", "y"]].to_numpy() * (w / w.sum())[:, None]).sum(0)
    assert emap.place(dids, scores) == pytest.approx(tuple(expected))
    assert emap.place(["1:7"], [0.3]) == pytest.approx((table.loc[rows[1], "x"], table.loc[rows[1], "y"]))
    with pytest.raises(ValueError, match="none of the neighbours"):
        emap.place(["nope"], [1.0])


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Services:
    return build_services(tmp_path_factory.mktemp("map"), with_map=True)


def test_services_map_holds_every_candidate_and_benchmark_query(services):
    pts = services.map.points
    cands = {d for t in services.tasks.values() for d in t.index.ids}
    assert set(pts.loc[pts["kind"] == "candidate", "id"]) == cands
    assert (pts["kind"] == "query (final)").sum() == len(services.queries) == (pts["kind"] == "query (direct)").sum()
    assert services.notes == []


def test_picking_a_reasoned_query_shows_its_path_neighbours_and_gold(services):
    t = services.queries
    q = t[t["route"] == "reason"].iloc[0]
    emap = services.map
    final = emap.query_point(q["pair"], q["qid"], "query (final)")
    direct = emap.query_point(q["pair"], q["qid"], "query (direct)")
    highlight, desc, _ = pick(services, {"picked": final})
    assert highlight["focus"]["x"] == pytest.approx(emap.xy[final][0], abs=1e-3)
    assert highlight["from"]["y"] == pytest.approx(emap.xy[direct][1], abs=1e-3)
    assert [emap.points.iloc[n]["id"] for n in highlight["neighbours"]] == list(q["top_dids"])[:5]
    assert {emap.points.iloc[n]["id"] for n in highlight["gold"]} == set(q["positives"])
    assert q["qid"] in desc and "reason" in desc


def test_picking_a_candidate_or_a_bad_point(services):
    emap = services.map
    n = emap.candidate_point(services.tasks["mscoco_task0"].index.ids[0])
    highlight, desc, image = pick(services, {"picked": n})
    assert "mscoco_task0" in desc and image and highlight["focus"]["x"] == pytest.approx(emap.xy[n][0], abs=1e-3)
    # an image-only candidate says what it is: "image" and its file name, not its id a second time
    c = services.tasks["mscoco_task0"].candidate(emap.points.iloc[n]["id"])
    name = f"image · {c.image_path.split('/')[-1]}"
    assert name in desc and desc.count(c.did) == 1 and emap.points.iloc[n]["label"] == name
    web = emap.candidate_point(services.tasks["webqa_task1"].index.ids[0])
    assert services.tasks["webqa_task1"].pool[0].text in pick(services, {"picked": web})[1]
    _, desc, _ = pick(services, {"picked": 10_000})
    assert "not on the map" in desc
    assert pick(services, None)[1].startswith("Click a point")


def test_a_live_query_lands_among_its_hits_and_a_reasoned_one_shows_its_path(services):
    highlight, desc = place_query(services, "webqa_task1", "who painted it?", None, "always", 4)
    res = search(services, "webqa_task1", "who painted it?", None, None, "always", 4)
    expected = services.map.place([h.did for h in res.hits], [h.score for h in res.hits])
    assert (highlight["focus"]["x"], highlight["focus"]["y"]) == pytest.approx(expected)
    assert len(highlight["neighbours"]) == 4 and "from" in highlight and "CoT" in desc
    assert f"#1 {res.hits[0].caption}" in desc  # the hits by name
    direct, _ = place_query(services, "webqa_task1", "who painted it?", None, "never", 4)
    assert "from" not in direct
    with pytest.raises(UserError, match="empty"):
        place_query(services, "webqa_task1", "", None, "auto", 4)


def test_a_mistake_on_the_map_is_a_warning_that_keeps_the_map(services):
    with gr.Blocks() as demo:
        build_map_tab(services)
    fn = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "on_place")
    with pytest.warns(UserWarning, match="empty"):
        out = fn("webqa_task1", "  ", None, "auto", 4)
    assert all(o == gr.skip() for o in out)
    change = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "change_task")
    text, image = change("webqa_task1", "who?")  # a text-only task: no image box, the image is cleared
    assert image.visible is False and image.value is None and text.visible is True


def test_map_tab_builds_and_sends_the_points_once(services):
    with gr.Blocks() as demo:
        build_map_tab(services)
    html = [c for c in demo.blocks.values() if isinstance(c, gr.HTML) and "points_url" in c.props]
    assert len(html) == 1
    # the points are a static file the page fetches once (not a prop, which the page would compare on updates)
    path = html[0].props["points_url"].split("gradio_api/file=", 1)[1]
    sent = json.loads(open(path, encoding="utf-8").read())
    assert len(sent["x"]) == len(services.map.points)
    kinds = [sent["kind"]["cats"][c] for c in sent["kind"]["codes"]]
    assert kinds == services.map.points["kind"].tolist()


def test_query_embeddings_of_another_model_are_left_off_the_map(services, tmp_path):
    pair = "mscoco_task0"
    folder = tmp_path / "eval"
    (folder / "embeddings").mkdir(parents=True)
    services.queries.to_parquet(folder / "queries.parquet")
    src = services.map  # reuse the real table; write embeddings that do not belong to this model
    rng = np.random.default_rng(5)
    for name in services.tasks:
        qids = services.queries.loc[services.queries["pair"] == name, "qid"].to_numpy()
        dim = services.encoder.backbone.hidden_size
        vec = _unit(rng, len(qids), dim)
        np.savez(folder / "embeddings" / f"{name}.npz", qid=qids.astype(str), final=vec, direct=vec)
    other = Services.load(str(services.encoder.backbone.model_id), services.root, "test", str(tmp_path / "c"),
                          encoder=services.encoder, analysis=folder / "queries.parquet")
    assert any(pair in n and "do not match" in n for n in other.notes)
    assert (other.map.points["kind"] == "candidate").sum() == (src.points["kind"] == "candidate").sum()
    assert not (other.map.points["pair"] == pair).loc[other.map.points["kind"] != "candidate"].any()


# ------------------------------------------------------------------------------------------ lit points
def _handler(demo, name):
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name)


def test_the_map_keeps_the_unit_vectors_of_its_points(services):
    emap = services.map
    assert emap.vectors.shape[0] == len(emap.points)
    assert np.linalg.norm(emap.vectors, axis=1) == pytest.approx(1.0, abs=1e-5)
    task = services.tasks["webqa_task1"]
    did = task.index.ids[3]
    n = emap.candidate_point(did)
    assert emap.vectors[n] == pytest.approx(task.index.embeddings[3], abs=1e-5)  # the index's own vector
    assert emap.sample.sentence().startswith("Showing all")


def test_a_box_selection_lists_its_points_from_the_map_not_from_the_page(services):
    from app.map_tab import lit_summary, lit_table, select_points

    emap = services.map
    q = emap.query_point(*services.queries[["pair", "qid"]].iloc[0])
    lit = select_points(services, [q, 0, 2, 2])
    assert lit.points == [0, 2, q]
    table = lit_table(services, lit)
    assert table["point"].tolist() == [0, 2, q]
    assert table["id"].tolist() == emap.points["id"].iloc[[0, 2, q]].tolist()
    row = services.queries.iloc[0]
    assert table["gold rank"].iloc[2] == str(int(row["gold_rank"])) and table["route"].iloc[2] == row["route"]
    assert table["route"].iloc[0] == "" and table["gold rank"].iloc[0] == ""
    assert "**3 points** selected" in lit_summary(services, lit)
    with pytest.raises(UserError, match="holds no point"):
        select_points(services, [])
    with pytest.raises(UserError, match="not on the map"):
        select_points(services, [len(emap.points)])


def test_a_map_search_lights_the_nearest_items_by_cosine(services):
    from analysis.map_selection import kinds_mask
    from app.map_tab import search_map

    lit = search_map(services, "webqa_task1", "who painted it?", 6)
    query = search(services, "webqa_task1", "who painted it?", None, None, "never", 1).result.embedding
    emap = services.map
    cos = emap.vectors @ query
    allowed = np.flatnonzero(kinds_mask(emap.points))
    expected = sorted(allowed, key=lambda r: (-cos[r], r))[:6]
    assert lit.points == expected and lit.similarity == pytest.approx(cos[expected].tolist(), abs=1e-4)
    assert lit.kind == "search" and "embedded as a query" in lit.about
    # a task without text-only queries: the text is matched against the labels instead, and said so
    label = str(emap.points.loc[emap.points["kind"] == "candidate", "label"].iloc[0])
    word = label.split()[-1]
    matched = search_map(services, "cirr_task7", word, 5)
    assert matched.similarity is None and "matched, not embedded" in matched.about
    assert all(word.lower() in (str(emap.points["label"].iloc[n]) + emap.points["id"].iloc[n]).lower()
               for n in matched.points)
    with pytest.raises(UserError, match="Type something"):
        search_map(services, "webqa_task1", "  ", 5)


def test_a_clicked_point_lists_its_nearest_neighbours_in_embedding_space(services):
    from app.map_tab import neighbours_lit

    emap = services.map
    n = emap.candidate_point(services.tasks["mscoco_task0"].index.ids[0])
    lit = neighbours_lit(services, n, 4)
    assert lit.points[0] == n and lit.similarity[0] == 1.0 and len(lit.points) == 5
    cos = emap.vectors @ emap.vectors[n]
    allowed = [r for r in np.flatnonzero(emap.points["kind"] != "query (direct)") if r != n]
    assert lit.points[1:] == sorted(allowed, key=lambda r: (-cos[r], r))[:4]
    with gr.Blocks() as demo:
        build_map_tab(services)
    value, desc, _, table, gallery, summary, current = _handler(demo, "on_pick")(4, gr.EventData(None, {"point": n}))
    assert value["lit"] == lit.points[1:] and value["focus"]["x"] == pytest.approx(emap.xy[n][0], abs=1e-3)
    assert table["point"].tolist() == lit.points and "nearest neighbours in embedding space" in summary
    assert current.points == lit.points and gallery  # mscoco candidates are images
    with pytest.warns(UserWarning, match="not on the map"):
        out = _handler(demo, "on_pick")(4, gr.EventData(None, {"point": 10**6}))
    assert out[0] == gr.skip() and out[3] == gr.skip()


def test_the_tab_handlers_select_clear_and_export(services, tmp_path, capsys):
    from app.map_tab import export_lit

    with gr.Blocks() as demo:
        build_map_tab(services)
    on_select = _handler(demo, "on_select")
    value, table, gallery, summary, lit = on_select(gr.EventData(None, {"points": [5, 1, 3]}))
    assert value == gr.skip() and table["point"].tolist() == [1, 3, 5] and lit.points == [1, 3, 5]
    value, table, _, summary, lit = on_select(gr.EventData(None, {"points": []}))
    assert "holds no point" in capsys.readouterr().out  # gr.Info, printed outside a request
    assert lit is None and table.empty and summary.startswith("Nothing is selected")
    value, *_, lit = on_select(gr.EventData(None, {"points": [], "cleared": True}))
    assert "rev" in value and "lit" not in value and lit is None  # the page's highlight is reset
    with pytest.warns(UserWarning, match="not on the map"):
        on_select(gr.EventData(None, {"points": [-3]}))
    csv_path, json_path = export_lit(services, select_points_of(services, range(len(services.map.points))), tmp_path)
    csv = pd.read_csv(csv_path)
    assert len(csv) == len(services.map.points) and csv["id"].astype(str).tolist() == \
        services.map.points["id"].astype(str).tolist()
    doc = json.loads(json_path.read_text())
    assert len(doc["rows"]) == len(csv) and doc["about"]["map"] == services.map.fingerprint
    csv_btn, json_btn = _handler(demo, "exports")(select_points_of(services, [0, 1]))
    assert csv_btn.interactive and json_btn.interactive
    assert pd.read_csv(csv_btn.value["path"])["point"].tolist() == [0, 1]  # the copy gradio serves
    assert [r["point"] for r in json.loads(open(json_btn.value["path"]).read())["rows"]] == [0, 1]
    none_csv, _ = _handler(demo, "exports")(None)
    assert none_csv.interactive is False and none_csv.value is None


def select_points_of(services, points):
    from app.map_tab import select_points

    return select_points(services, list(points))


def test_the_map_and_the_error_table_send_each_other_their_queries(services):
    from app.errors_tab import build_errors_tab, listing, map_keys
    from app.map_tab import MapLink, errors_lit, keys_of

    shown = listing(services, "all", "webqa_task1", 5)
    sent = map_keys(shown, "all, webqa_task1")
    lit = errors_lit(services, sent)
    emap = services.map
    expected = sorted(emap.query_point(p, q, kind) for p, q in zip(shown["pair"], shown["qid"], strict=True)
                      for kind in ("query (direct)", "query (final)"))
    assert lit.points == expected
    keys = keys_of(services, lit)
    assert sorted(map(tuple, keys)) == sorted(zip(shown["pair"], shown["qid"], strict=True))
    back = listing(services, "all", "all", 5, {"keys": keys[:2]})  # the error table, filtered to two of them
    assert sorted(zip(back["pair"], back["qid"], strict=True)) == sorted(map(tuple, keys[:2]))
    with pytest.raises(UserError, match="only candidates"):
        keys_of(services, select_points_of(services, [0]))
    with pytest.raises(UserError, match="no query"):
        errors_lit(services, {"keys": []})
    with gr.Blocks() as demo:
        link = MapLink.create()
        build_map_tab(services, link)
        build_errors_tab(services, link)
    with pytest.warns(UserWarning, match="only candidates"):
        assert _handler(demo, "send_to_errors")(select_points_of(services, [0])) == gr.skip()
    out = _handler(demo, "send_to_errors")(lit)
    assert sorted(map(tuple, out["keys"])) == sorted(map(tuple, keys))
    value, table, *_ = _handler(demo, "from_errors")(sent)
    assert value["lit"] == expected and sorted(table["point"]) == expected
