"""The app's handlers, called directly and through a launched server (gradio_client), on a tiny model.

The tiny TRACE-mini here is random (a test model for the mechanics); the shipped default is assets/trace-mini.
"""

from __future__ import annotations

import json

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
        assert "/search" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        out = client.predict("a dog on a sofa", None, "mscoco_task0", "never", 4, api_name="/search")
        data = out if isinstance(out, dict) else json.loads(out)
        assert data["route"] == "direct" and len(data["hits"]) == 4 and data["task"] == "mscoco_task0"
        img = services.tasks["cirr_task7"].queries[0]
        out = client.predict(img.text, handle_file(services.image_path(img.image_path)), "cirr_task7", "never", 3,
                             api_name="/search")
        data = out if isinstance(out, dict) else json.loads(out)
        assert data["task"] == "cirr_task7" and len(data["hits"]) == 3
        with pytest.raises(Exception, match="empty"):
            client.predict("", None, "mscoco_task0", "auto", 4, api_name="/search")
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


def test_the_use_cases_hold_no_gradio():
    """The app's logic (usecases.py, services.py) imports without Gradio: the tabs are its only users of it."""
    import subprocess
    import sys

    code = "import sys, app.usecases; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]
