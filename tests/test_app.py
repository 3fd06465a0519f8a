"""The app's handlers, called directly and through a launched server (gradio_client), on a tiny model.

The tiny TRACE-mini here is random (a test model for the mechanics); the shipped default is assets/trace-mini.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from app.search_tab import comparison_markdown
from app.services import Services
from app.usecases import UserError, compare, search, stream_search
from tests.mbeir_fixture import build_fixture
from tests.tiny_mini import build_tiny_mini
from trace_core.records import CotDelta


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    fx = build_fixture(root / "mbeir")
    model = build_tiny_mini(root / "mini")
    return Services.load(str(model), fx["root"], "test", str(root / "cache"))


def test_tasks_come_from_the_data_with_their_instructions(services):
    assert sorted(services.tasks) == ["cirr_task7", "mscoco_task0", "webqa_task1"]
    t = services.tasks["mscoco_task0"]
    assert t.query_modality == "text" and t.cand_modality == "image"
    assert t.instructions[0] == "Find me an everyday image that matches the given caption."
    assert "MSCOCO" in t.label and len(t.index) == 12


def test_benchmark_query_marks_gold_and_its_exact_rank(services):
    t = services.tasks["mscoco_task0"]
    q = t.queries[0]
    res = search(services, "mscoco_task0", q.text, None, None, "never", 3, q.qid)
    gold_ids = t.positives[q.qid]
    assert [g[0] for g in res.gold] and {g[0] for g in res.gold} == gold_ids
    for did, rank, score in res.gold:
        assert (rank <= 3) == any(h.did == did for h in res.hits)
        assert t.index.rank_of(res.result.embedding, did) == (rank, pytest.approx(score))
    assert all(h.gold == (h.did in gold_ids) for h in res.hits)
    assert len(res.hits) == 3 and [h.rank for h in res.hits] == [1, 2, 3]
    assert all(h.image for h in res.hits)  # a text->image task returns images to show


def test_streaming_yields_cot_then_result(services):
    events = list(stream_search(services, "mscoco_task0", "a dog", None, None, "always", 5))
    deltas = [e for e in events if isinstance(e, CotDelta)]
    assert deltas and "".join(d.text for d in deltas) == events[-1].result.cot
    payload = events[-1].to_json(services.fingerprint)
    assert payload["route"] == "reason" and len(payload["hits"]) == 5 and payload["model"]["dim"] == 32


def test_bad_input_gets_a_clear_message(services, tmp_path):
    with pytest.raises(UserError, match="empty"):
        search(services, "mscoco_task0", "  ", None, None, "auto", 5)
    with pytest.raises(UserError, match="takes a text query"):
        search(services, "mscoco_task0", "a dog", Image.new("RGB", (20, 20)), None, "auto", 5)
    with pytest.raises(UserError, match="upload the reference image"):
        search(services, "cirr_task7", "make it red", None, None, "auto", 5)
    broken = tmp_path / "b.png"
    broken.write_bytes(b"nope")
    with pytest.raises(UserError, match="cannot be used"):
        search(services, "cirr_task7", "make it red", str(broken), None, "auto", 5)
    with pytest.raises(UserError, match="unknown task"):
        search(services, "nope_task1", "x", None, None, "auto", 5)
    # and the services still serve after the errors
    assert search(services, "webqa_task1", "who?", None, None, "never", 2).hits


def test_compare_reports_gold_ranks_overlap_and_changes(services):
    q = services.tasks["cirr_task7"].queries[1]
    img = Image.open(services.image_path(q.image_path))
    c = compare(services, "cirr_task7", q.text, img, None, 5, q.qid)
    assert c.off.result.reasoning == "never" and c.on.result.reasoning == "always"
    off, on = [h.did for h in c.off.hits], [h.did for h in c.on.hits]
    assert c.k == 5 and c.overlap == len(set(off) & set(on))
    assert c.entered == [d for d in on if d not in off] and c.left == [d for d in off if d not in on]
    assert len(c.entered) == len(c.left) == 5 - c.overlap
    md = comparison_markdown(c)
    assert "without reasoning" in md and "with reasoning" in md and f"Top-5 overlap: **{c.overlap}/5**" in md
    assert f"gold `{c.off.gold[0][0]}` | rank {c.off.gold[0][1]} " in md


def test_launched_app_serves_the_search_api(services):
    from gradio_client import Client, handle_file

    from app.ui import build_app

    demo = build_app(services)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(url, verbose=False)
        api = client.view_api(print_info=False, return_format="dict")
        # only the three documented endpoints: the UI's own events stay private
        assert set(api["named_endpoints"]) == {"/search", "/compare", "/map_place"}
        assert not api["unnamed_endpoints"]
        out = client.predict("a dog on a sofa", None, "mscoco_task0", "never", 4, api_name="/search")
        data = out if isinstance(out, dict) else json.loads(out)
        assert data["route"] == "direct" and len(data["hits"]) == 4 and data["task"] == "mscoco_task0"
        img = services.tasks["cirr_task7"].queries[0]
        out = client.predict(img.text, handle_file(services.image_path(img.image_path)), "cirr_task7", "never", 3,
                             api_name="/search")
        data = out if isinstance(out, dict) else json.loads(out)
        assert data["task"] == "cirr_task7" and len(data["hits"]) == 3
        assert all(h["image"].startswith("mbeir_images/") and h["name"].startswith("image · ") for h in data["hits"])
        # the repetition guard: an optional last parameter, off by default, checked
        out = client.predict("a dog on a sofa", None, "mscoco_task0", "always", 2, 3, api_name="/search")
        data = out if isinstance(out, dict) else json.loads(out)
        assert data["no_repeat_ngram"] == 3 and data["reasoning"] == "always"
        with pytest.raises(Exception, match="no_repeat_ngram"):
            client.predict("a dog", None, "mscoco_task0", "always", 2, 12, api_name="/search")
        with pytest.raises(Exception, match="empty"):
            client.predict("", None, "mscoco_task0", "auto", 4, api_name="/search")
        # a chain of thought given by hand: the query is embedded after it ("" embeds at once)
        out = client.predict("a dog on a sofa", None, "mscoco_task0", "auto", 4, 0, "", api_name="/search")
        data = out if isinstance(out, dict) else json.loads(out)
        assert data["route"] == "direct" and data["cot"] == ""
        out = client.predict("a dog on a sofa", None, "mscoco_task0", "auto", 4, 0, "It is a dog.",
                             api_name="/search")
        data = out if isinstance(out, dict) else json.loads(out)
        assert data["route"] == "reason" and data["cot"] == "It is a dog."
    finally:
        demo.close()


def test_difficulty_tab_lists_the_queries_of_a_band(tmp_path):
    from app.difficulty_tab import band_queries
    from tests.test_analysis import _table

    t = _table()
    t["qid"], t["query_txt"], t["cot"] = [f"q{i}" for i in range(5)], "x", ""
    hard = band_queries(t, "rank 21-100")
    assert list(hard["qid"]) == ["q1", "q3"]
    assert list(band_queries(t, "all", "skipped: helped")["qid"]) == ["q3"]
    assert "outcome" in hard.columns


def test_build_analysis_evaluates_once_and_caches_by_fingerprint(services, tmp_path, monkeypatch):
    import argparse
    import importlib.util
    from pathlib import Path

    import pandas as pd

    import trace_core.evaluate as evaluate_module

    # app.py (the entry point) is shadowed by the app/ package on import; load it by path
    spec = importlib.util.spec_from_file_location("app_main", Path(__file__).resolve().parents[1] / "app.py")
    app_main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_main)
    args = argparse.Namespace(cache_dir=str(tmp_path / "cache" / "index"), mbeir_dir=str(services.root), split="test")
    bench, table = app_main.build_analysis(services.encoder, args)
    assert table.is_file() and bench.is_file() and services.encoder.fingerprint["revision"][:12] in str(table)
    t = pd.read_parquet(table)
    assert {"gold_rank_direct", "gold_rank_always"} <= set(t.columns) and len(t) == 18
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: pytest.fail("evaluated twice"))
    assert app_main.build_analysis(services.encoder, args) == (bench, table)
    loaded = Services.load("unused", services.root, "test", args.cache_dir, bench, encoder=services.encoder,
                           analysis=table, embedding_map=False)
    assert len(loaded.queries) == 18 and set(loaded.benchmark["pairs"]) == set(services.tasks)


def test_app_py_refuses_fewer_than_one_thread(capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("app_main", Path(__file__).resolve().parents[1] / "app.py")
    app_main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_main)
    with pytest.raises(SystemExit) as exit_:
        app_main.main(["--threads", "0"])
    assert exit_.value.code == 2 and "--threads must be at least 1" in capsys.readouterr().err


def test_the_use_cases_hold_no_gradio():
    """The app's logic (usecases.py, services.py) imports without Gradio: the tabs are its only users of it."""
    import subprocess
    import sys

    code = "import sys, app.usecases; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


# ------------------------------------------------------------------------------------------ a visitor's first minutes
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Services with the evaluation beside the model (queries.parquet, results.json), as `python app.py` loads."""
    from tests.app_fixture import build_services

    return build_services(tmp_path_factory.mktemp("evaluated"))


def _image_of(services, example):
    return Image.open(services.image_path(example.image)) if example.image else None


def test_every_task_has_examples_that_find_their_gold(evaluated):
    from app.first_visit import example_queries

    table = evaluated.queries
    for name, task in evaluated.tasks.items():
        examples = example_queries(evaluated, name, 4)
        assert len(examples) == min(4, len(task.queries)), name
        ranks = table.loc[table["pair"] == name, "gold_rank"]
        # the best-ranked benchmark queries of the loaded model's evaluation come first
        assert examples[0].gold_rank == int(ranks.min())
        assert sorted(e.gold_rank for e in examples) == sorted(int(r) for r in ranks.nsmallest(4))
        for e in examples[:2]:  # and running one finds its gold where the evaluation did, in the top-k
            res = search(evaluated, name, e.text, _image_of(evaluated, e), e.instruction, "auto", 10, e.qid)
            assert res.gold[0][1] == e.gold_rank <= 10, (name, e.qid)
            assert any(h.gold for h in res.hits)
            assert e.difficulty in ("simple", "complex") and f"gold at #{e.gold_rank}" in e.result


def test_examples_without_an_evaluation_are_the_first_queries_marked_so(services):
    from app.first_visit import example_queries

    examples = example_queries(services, "webqa_task1", 3)
    assert [e.qid for e in examples] == [q.qid for q in services.tasks["webqa_task1"].queries[:3]]
    assert all(e.gold_rank is None and "not evaluated" in e.result for e in examples)


def test_the_default_task_takes_a_typed_query_and_is_the_best_scored(evaluated):
    import dataclasses

    from app.first_visit import default_task

    typed = [n for n, t in evaluated.tasks.items() if t.query_modality == "text"]
    assert set(typed) == {"mscoco_task0", "webqa_task1"}
    for best in typed:  # follows the evaluation's numbers, whichever task they favour
        report = json.loads(json.dumps(evaluated.benchmark))
        for name in typed:
            report["pairs"][name]["recall@5"] = 0.9 if name == best else 0.1
        assert default_task(dataclasses.replace(evaluated, benchmark=report, queries=None)) == best
    bare = dataclasses.replace(evaluated, benchmark=None, queries=None)
    assert default_task(bare) == typed[0]  # no numbers: the first text task


def test_hits_and_the_json_say_what_each_candidate_is(services):
    res = search(services, "mscoco_task0", "a dog", None, None, "never", 3)
    assert all(h.name == f"image · {h.image_rel.split('/')[-1]}" for h in res.hits)  # image-only candidates
    data = res.to_json(services.fingerprint)
    root = str(services.root.resolve())
    for hit, h in zip(data["hits"], res.hits, strict=True):
        assert hit["image"] == h.image_rel and hit["image"].startswith("mbeir_images/")  # relative to the data root
        assert (services.root / hit["image"]).is_file() and hit["text"] is None and hit["name"] == h.name
    assert root not in json.dumps(data)  # never a server path
    text = search(services, "webqa_task1", "who?", None, None, "never", 2)
    assert all(h.name == h.text and h.image_rel is None for h in text.hits)
    assert all(hit["text"] and hit["image"] is None for hit in text.to_json(services.fingerprint)["hits"])


def test_the_search_export_is_the_json_in_a_scratch_folder_of_its_own(services):
    from app import scratch
    from app.search_tab import export_file

    res = search(services, "mscoco_task0", "a dog", None, None, "never", 3)
    first, second = Path(export_file(res, services.fingerprint)), Path(export_file(res, services.fingerprint))
    assert first.parent != second.parent and first.name == "trace-search.json"  # one folder per download
    assert scratch.root() in first.parents
    assert json.loads(first.read_text()) == json.loads(json.dumps(res.to_json(services.fingerprint)))


def test_the_route_badge_says_what_the_model_itself_would_have_done(services):
    import dataclasses

    from app.search_tab import route_badge

    r = search(services, "webqa_task1", "who?", None, None, "always", 2).result
    forced = dataclasses.replace(r, reasoning="always", route="reason", p_emb=1.0, emb_margin=9.0, first_step=None,
                                 stop_reason="emb")
    badge = route_badge(forced)
    assert "because you forced reasoning" in badge and "would have embedded at once" in badge and "1.00" in badge
    own = dataclasses.replace(forced, p_emb=0.01, emb_margin=-4.0)
    assert "would have reasoned too" in route_badge(own)
    off = dataclasses.replace(forced, reasoning="never", route="direct", p_emb=0.01, emb_margin=-4.0)
    assert "turned reasoning off" in route_badge(off) and "would have reasoned first" in route_badge(off)
    auto = dataclasses.replace(forced, reasoning="auto", route="direct", stop_reason="direct")
    assert "the model chose to embed at once" in route_badge(auto) and "forced" not in route_badge(auto)


def test_a_chain_of_thought_cut_at_the_cap_is_marked(services):
    import dataclasses

    from app.display import cap_warning
    from app.search_tab import comparison_markdown, route_badge, stats_line

    c = compare(services, "webqa_task1", "who?", None, None, 3)
    on = c.on.result
    capped = dataclasses.replace(on, stop_reason="max_tokens", cot_tokens=256)
    ended = dataclasses.replace(on, stop_reason="emb")
    assert "cap-warning" in route_badge(capped, 256) and "256-token cap" in route_badge(capped, 256)
    assert "repetition guard" in cap_warning(capped)  # the way out is named
    assert "cap-warning" not in route_badge(ended) and not cap_warning(ended)
    assert "cut off at the cap" in stats_line(capped) and "cut off" not in stats_line(ended)
    assert "ran into the token cap" in comparison_markdown(dataclasses.replace(c, on=dataclasses.replace(
        c.on, result=capped)))
    guarded = dataclasses.replace(capped, no_repeat_ngram=3)
    assert "repetition guard" not in cap_warning(guarded) and "3-grams" in stats_line(guarded)


def test_the_repetition_guard_reaches_the_model_and_is_checked(services):
    from app.search_tab import search_api

    res = search(services, "webqa_task1", "who?", None, None, "always", 2, no_repeat_ngram=3)
    assert res.result.no_repeat_ngram == 3 and res.to_json(services.fingerprint)["no_repeat_ngram"] == 3
    ids = res.result.cot_token_ids
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    assert len(grams) == len(set(grams))  # no 3-gram twice
    assert search_api(services, "who?", None, "webqa_task1", "always", 2)["no_repeat_ngram"] == 0  # off by default
    for bad in (9, -1, 2.5, "x"):
        with pytest.raises(UserError, match="no_repeat_ngram"):
            search_api(services, "who?", None, "webqa_task1", "always", 2, bad)


def test_search_with_a_result_moves_to_a_task_that_takes_it(services):
    from app.usecases import query_from_hit

    cirr = search(services, "cirr_task7", "make it red", Image.new("RGB", (16, 16)), None, "never", 3)
    hit = cirr.hits[0]
    # on an image task: the result's image becomes the reference image, the modification text stays
    hq = query_from_hit(services, "cirr_task7", hit.text, hit.image, "make it red")
    assert (hq.task, hq.text, hq.image) == ("cirr_task7", "make it red", hit.image)
    again = search(services, hq.task, hq.text, Image.open(hq.image), None, "never", 3)
    assert again.hits and again.task == "cirr_task7"
    # from a text-only task, an image result moves to the task that takes an image
    coco = search(services, "mscoco_task0", "a dog", None, None, "never", 3).hits[0]
    hq = query_from_hit(services, "mscoco_task0", coco.text, coco.image, "a dog")
    assert hq.task == "cirr_task7" and hq.image == coco.image
    assert search(services, hq.task, hq.text, Image.open(hq.image), None, "never", 2).hits
    with pytest.raises(UserError, match="takes an image query"):  # nothing here takes an image alone
        query_from_hit(services, "mscoco_task0", None, coco.image, "")
    # a text result stays a text query on its text task
    web = search(services, "webqa_task1", "who?", None, None, "never", 2).hits[0]
    assert query_from_hit(services, "webqa_task1", web.text, web.image, "who?").text == web.text


def test_a_mistake_keeps_the_last_results_and_says_why(services):
    """The Search button's handler: a user error is a warning and a note; every result output is skipped."""
    import gradio as gr

    from app.ui import build_app

    demo = build_app(services)
    fn = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "stream")
    ok = list(fn("webqa_task1", "", "who?", None, "never", 3, "", False))
    assert len(ok[-1][5]) == 3  # the table
    with pytest.warns(UserWarning, match="empty"):
        bad = list(fn("webqa_task1", "", "  ", None, "never", 3, "", False))
    [out] = bad
    assert all(o == gr.skip() for o in out[:-1]) and "empty" in out[-1] and "last search" in out[-1]
    compare_fn = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "run_compare")
    with pytest.warns(UserWarning, match="takes a text query"):
        out = compare_fn("webqa_task1", "", "who?", Image.new("RGB", (8, 8)), 3, "")
    assert all(o == gr.skip() for o in out[:-1])
    # a compare replaces every result output: nothing of the previous query stays
    out = compare_fn("webqa_task1", "", "who?", None, 3, "")
    assert all(o != gr.skip() for o in out[:-1]) and "with reasoning" in out[6]


def test_the_header_explains_trace_and_labels_the_demo_model(evaluated):
    from app.ui import PLAIN, model_notice

    assert "In plain words" in PLAIN and "arXiv 2603.02929" in PLAIN
    assert "Task-adaptive Reasoning And Compressing Embeddings" in PLAIN
    notice = model_notice(evaluated)
    assert "Demo model" in notice and "**not** the paper's model" in notice
    rates = evaluated.queries.groupby("pair")["route"].apply(lambda r: (r == "reason").mean())
    for pair, rate in rates.items():  # which tasks reason, from the evaluation
        assert (f"({pair}): {rate:.0%}" in notice) == (rate >= 0.05)


def test_the_benchmark_reading_follows_the_numbers():
    from pathlib import Path

    from app.benchmark_tab import benchmark_reading

    shipped = json.loads((Path(__file__).resolve().parents[1] / "assets" / "trace-mini" / "results.json").read_text())
    text = benchmark_reading(shipped)
    heads = {n: round(100 * r["average"]["headline"], 1) for n, r in shipped["runs"].items()}
    best = max(heads, key=heads.get)
    assert f"Best on average: *{best}* ({heads[best]:.1f})" in text
    auto, never = heads["TRACE-mini auto"], heads["never reason"]  # the loaded model's own runs
    assert ("reasoning helps on average" in text) == (auto > never)
    assert ("does not yet help" in text) == (auto <= never)
    r1 = shipped["evidence"]["auto_minus_never_at"]["1"]  # the complex queries, at each cut-off
    assert f"R@1 {100 * r1['never_recall@1']:.1f} → {100 * r1['auto_recall@1']:.1f}" in text

    def run(mode, a, b):
        return {"model": {"model_id": "m"}, "config": {"reasoning": mode},
                "pairs": {"p_task0": {"recall@5": a}, "p_task1": {"recall@5": b}},
                "average": {"headline": (a + b) / 2}}

    helps = {"runs": {"auto": run("auto", 0.6, 0.4), "never": run("never", 0.5, 0.4)}}
    text = benchmark_reading(helps, demo=False)
    assert "reasoning helps on average" in text and "Best on average: *auto* (50.0)" in text
    assert "auto is above never on 1 of 2 (p_task0), level on 1" in text
    # another checkpoint in a folder of the same name (an ablation) is told apart by its weights' fingerprint
    ablation = {**run("never", 0.9, 0.9), "model": {"model_id": "m", "revision": "other"}}
    own = {"model_id": "m", "revision": "mine"}
    helps = {"runs": {"auto": {**run("auto", 0.6, 0.4), "model": own}, "ablation never": ablation,
                      "never": {**run("never", 0.5, 0.4), "model": own}}}
    assert "reasoning helps on average" in benchmark_reading(helps, demo=False)



def test_a_query_image_goes_through_the_image_box_unchanged(services, tmp_path):
    """An emoji's transparent background must reach the model as the evaluation saw it (on white), and its
    pixels unchanged: the query image boxes keep PNG and the image's own mode (no lossy WebP, no plain RGB)."""
    import numpy as np

    from app.ui import build_app
    from trace_core.records import load_image

    rgba = Image.new("RGBA", (24, 24), (0, 0, 0, 0))
    for x in range(6, 18):
        for y in range(6, 18):
            rgba.putpixel((x, y), (200, (x * 20) % 256, (y * 13) % 256, 255))
    demo = build_app(services)
    boxes = [b for b in demo.blocks.values() if getattr(b, "label", None) == "Query image"]
    assert len(boxes) == 3  # search, map, walkthrough
    for box in boxes:
        back = box.preprocess(box.postprocess(rgba))  # what the handler gets after the box showed the image
        assert np.array_equal(np.asarray(load_image(back)), np.asarray(load_image(rgba)))
        assert np.asarray(load_image(back))[0, 0].tolist() == [255, 255, 255]  # transparent -> white


def test_an_image_candidate_is_called_by_what_the_data_says_it_shows():
    """`image_names`: the name a candidate's src_content gives wins, then a candidate pairing the image with
    text, then the text gold of an image-only query; an image nothing names keeps its file name."""
    from app.services import Task, image_names
    from trace_core.mbeir import MBEIRCandidate, MBEIRQuery

    def cand(did, text, image, src=None):
        modality = "image,text" if text and image else ("image" if image else "text")
        return MBEIRCandidate(did, text, image, modality, src)

    pool = [cand("1:0", None, "im/fox.png", json.dumps({"name": "fox face"})),
            cand("1:1", None, "im/bat.png"), cand("1:2", "bat", "im/bat.png"),
            cand("1:3", None, "im/cat.png"), cand("1:4", "cat", None),
            cand("1:5", None, "im/odd.png", "{not json"), cand("1:6", "a fox", "im/fox.png")]
    query = MBEIRQuery("1:9", None, "im/cat.png", "image", 3, ("1:4",), (), None)
    task = Task("t", "T", "image", "image", ("",), pool, None, [query], {"1:9": {"1:4"}})
    task.shows = image_names([task])
    assert task.name_of("1:0") == "image · fox face"  # src_content, before the pairing with "a fox"
    assert task.name_of("1:1") == "image · bat"
    assert task.name_of("1:3") == "image · cat"
    assert task.name_of("1:5") == "image · odd.png"  # unreadable src_content: the file name
    assert task.name_of("1:2") == "bat" and task.name_of("1:4") == "cat"  # text says it already
    assert task.name_of("1:0", limit=10) == "image · f…"


def test_a_chain_of_thought_given_by_hand_is_what_the_query_is_embedded_after(services):
    """search_with_cot embeds the query after the given chain (teacher forcing; that the model's own chain
    gives back its own embedding is tested on the encoder, test_report_v2): an empty chain is the direct
    route, a written one moves the embedding, and the ranking is that embedding's."""
    from app.usecases import search_with_cot
    from trace_core.records import Query

    task = services.tasks["mscoco_task0"]
    direct = search(services, "mscoco_task0", "a dog on a sofa", None, None, "never", 5)
    blank = search_with_cot(services, "mscoco_task0", "a dog on a sofa", None, None, "  ", 5)
    assert blank.result.route == "direct" and float(blank.result.embedding @ direct.result.embedding) > 0.9999
    cot = "It shows a dog lying on a sofa."
    given = search_with_cot(services, "mscoco_task0", "a dog on a sofa", None, None, cot, 5)
    query = Query(text="a dog on a sofa", instruction=task.instructions[0])
    [expected] = services.encoder.encode_with_cot([query], [cot])
    assert given.result.route == "reason" and given.result.cot == cot
    assert float(given.result.embedding @ expected.embedding) > 0.9999
    assert float(given.result.embedding @ direct.result.embedding) < 0.9999
    _, ids = task.index.search(given.result.embedding, 5)
    assert [h.did for h in given.hits] == list(ids[0])
    with pytest.raises(UserError, match="too long"):
        search_with_cot(services, "mscoco_task0", "a dog", None, None, "x" * 5000, 5)
    with pytest.raises(UserError, match="empty"):
        search_with_cot(services, "mscoco_task0", "", None, None, "a dog", 5)


def test_a_deep_link_is_read_on_load_and_every_figure_and_table_downloads_its_data(evaluated):
    """The load handler selects the link's tab and hands its view to that tab (a warning for a bad value); the
    figures' and the benchmark tables' CSVs hold the frames they are drawn from (browser: test_browser_links)."""
    import types

    import gradio as gr
    import pandas as pd

    from analysis.difficulty import bias_sweep, by_band
    from app.benchmark_tab import comparison_table, run_table
    from app.ui import build_app

    demo = build_app(evaluated)  # what the page's load event runs, called with a request's query parameters
    restore = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "restore")
    with pytest.warns(UserWarning, match="'nope_task9' that does not exist"):
        tabs, tab, to_search, to_walk, qs = restore(types.SimpleNamespace(query_params={
            "tab": "walkthrough", "task": "nope_task9", "q": "a dog"}))
    assert tabs.selected == tab == "walkthrough" and to_search == gr.skip()
    assert to_walk.view.text == "a dog" and to_walk.run and qs.startswith("tab=walkthrough&task=")
    assert restore(types.SimpleNamespace(query_params={}))[2:4] == (gr.skip(), gr.skip())  # a plain address
    csvs = {b.elem_id: pd.read_csv(b.value["path"]) for b in demo.blocks.values() if isinstance(b, gr.DownloadButton)
            and b.value}
    pd.testing.assert_frame_equal(csvs["fig-reasoning-vs-difficulty-csv"],
                                  by_band(evaluated.queries, 5).astype({"difficulty": str}), check_dtype=False)
    pd.testing.assert_frame_equal(csvs["fig-cost-benefit-csv"], bias_sweep(evaluated.queries, k=5), check_dtype=False)
    b = evaluated.benchmark  # the Benchmark tab's first table, as a CSV
    name, shown = ("per-pair-and-mode", comparison_table(b)) if "runs" in b else ("full-metrics", run_table(b))
    pd.testing.assert_frame_equal(csvs[f"benchmark-{name}-csv"], shown, check_dtype=False)
