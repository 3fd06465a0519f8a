"""The benchmark scripts' own logic: their search baseline is correct, and the load test drives a real app."""

from __future__ import annotations

import numpy as np
import pytest

from bench.common import alternate, percentile
from bench.search import clustered, numpy_topk
from bench.serving import load_test
from tests.app_fixture import build_services


def test_numpy_topk_is_the_exact_top_k_across_chunks():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 16), dtype=np.float32)
    x, q = clustered(1000, 16, rng, centres), clustered(5, 16, rng, centres)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    got = numpy_topk(q, x, 10, chunk=128)  # several chunks, merged
    expected = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert np.array_equal(got, expected)


def test_percentile_and_alternate():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    for q in (0, 25, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert np.isnan(percentile([], 50))
    calls = []
    a, b = alternate(lambda: calls.append("a"), lambda: calls.append("b"), 3)
    assert calls == ["a", "b"] * 3 and a >= 0 and b >= 0


def test_load_test_drives_search_compare_and_map_through_the_api(tmp_path):
    from app.ui import build_app

    services = build_services(tmp_path, with_analysis=False, with_map=True)
    demo = build_app(services)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        queries = [("webqa_task1", "who painted the mona lisa?"), ("mscoco_task0", "a dog on a sofa")]
        out = load_test(url, clients=3, seconds=8, queries=queries, seed=1)
    finally:
        demo.close()
    assert out["errors"] == 0, out["error_samples"]
    assert out["served"] >= 3 and out["p95_s"] >= out["p50_s"] > 0
    assert out["search_served"] + out["compare_served"] + out["map_place_served"] == out["served"]
