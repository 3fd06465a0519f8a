"""The server answers before its caches are built: indexes and the map are built in the background, with
progress, and the tasks that are ready work meanwhile."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app.building import Build, status_markdown
from app.services import Services
from app.usecases import UserError, search
from tests.mbeir_fixture import build_fixture
from tests.tiny_mini import build_tiny_mini
from trace_core.loading import load_model


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bg")
    fx = build_fixture(root / "mbeir")
    model = build_tiny_mini(root / "mini")
    return fx["root"], str(model), load_model(str(model))


class Gate:
    """Holds the background build after its first chunk of candidates is embedded (at its progress report,
    where it holds no lock) until the test opens it: a real build, only held back, so the test can look at
    the server mid-build deterministically."""

    def __init__(self, monkeypatch):
        self.open, self.entered = threading.Event(), threading.Event()
        real = Build.report

        def held(build, name, done, total=None):
            real(build, name, done, total)
            self.entered.set()
            assert self.open.wait(60), "the test never opened the gate"

        monkeypatch.setattr(Build, "report", held)


def _wait(build: Build, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not build.finished:
        assert time.monotonic() < deadline, status_markdown(build)
        time.sleep(0.05)


def test_load_returns_before_building_and_the_build_matches_a_synchronous_one(parts, tmp_path, monkeypatch):
    data, model, encoder = parts
    sync = Services.load(model, data, "test", str(tmp_path / "sync"), encoder=encoder, embedding_map=False)
    gate = Gate(monkeypatch)
    try:
        services = Services.load(model, data, "test", str(tmp_path / "bg"), encoder=encoder,
                                 embedding_map=True, background=True)
        assert gate.entered.wait(60)
        # Served already: nothing is ready, each pool's stage and the map's are listed, with progress words.
        assert not any(t.ready for t in services.tasks.values()) and services.map is None
        assert services.build.stages[next(iter(services.build.stages))].done > 0
        banner = status_markdown(services.build)
        assert "Still building" in banner and "Embedding map" in banner
        assert all(f"index:{n}" in services.build.stages for n in services.tasks)
        first = next(iter(services.tasks))
        with pytest.raises(UserError, match=f"index of {first} is still being built"):
            search(services, first, "a dog", None, None, "never", 3)
        assert not services.model_lock.locked(), "the build must not hold the model between chunks"
        gate.open.set()
        _wait(services.build)
    finally:
        gate.open.set()
    assert all(s.state == "done" for s in services.build.stages.values()), status_markdown(services.build)
    assert status_markdown(services.build) == ""
    assert services.map is not None and len(services.map.points)
    for name, task in services.tasks.items():
        np.testing.assert_allclose(task.index.embeddings, sync.tasks[name].index.embeddings, atol=1e-5)
        assert task.index.ids == sync.tasks[name].index.ids
    name = next(n for n, t in services.tasks.items() if t.takes_text and not t.takes_image)
    assert search(services, name, "a dog", None, None, "never", 3).hits


def test_ready_tasks_search_while_another_is_built(parts, tmp_path, monkeypatch):
    data, model, encoder = parts
    cache = str(tmp_path / "cache")
    warm = Services.load(model, data, "test", cache, encoder=encoder, embedding_map=False)
    text_task = next(n for n, t in warm.tasks.items() if t.takes_text and not t.takes_image)
    other = next(n for n in warm.tasks if n != text_task)
    for folder in Path(cache).glob(f"{warm.tasks[other].pool_name}-*"):
        shutil.rmtree(folder)  # this one pool must be built again
    gate = Gate(monkeypatch)
    try:
        services = Services.load(model, data, "test", cache, encoder=encoder, embedding_map=False, background=True)
        assert gate.entered.wait(60)
        assert services.tasks[text_task].ready and not services.tasks[other].ready
        assert list(services.build.stages) == [f"index:{other}"]
        # The ready task answers while the other pool's build is held mid-way.
        res = search(services, text_task, "a dog", None, None, "never", 3)
        assert len(res.hits) == 3
        with pytest.raises(UserError, match=f"Ready now: .*{text_task}"):
            search(services, other, "x", None, None, "never", 3)
        gate.open.set()
        _wait(services.build)
    finally:
        gate.open.set()
    assert services.tasks[other].ready


def test_a_failed_stage_is_reported_and_the_rest_keeps_working(parts, tmp_path):
    data, model, encoder = parts
    real = encoder.encode_candidates
    calls = {"n": 0}

    def fails_once(cands, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk full")
        return real(cands, *args, **kwargs)

    encoder.encode_candidates = fails_once
    try:
        services = Services.load(model, data, "test", str(tmp_path / "c"), encoder=encoder, embedding_map=True,
                                 background=True)
        _wait(services.build)
    finally:
        encoder.encode_candidates = real
    failed = [s for s in services.build.stages.values() if s.state == "failed"]
    assert failed[0].name.startswith("index:") and "disk full" in failed[0].error
    assert services.build.stages["map"].state == "failed"  # the map needs every pool
    assert "failed" in status_markdown(services.build)
    ok = [t for t in services.tasks.values() if t.ready]
    assert len(ok) == len(services.tasks) - 1


def test_progress_words():
    b = Build()
    b.add("index:x", "Index of X", 100, "candidates embedded")
    assert "waiting" in b.describe("index:x")
    b.start("index:x")
    b.report("index:x", 25)
    assert "25 of 100 candidates embedded (25 %)" in b.describe("index:x") and "left" in b.describe("index:x")
    b.finish("index:x")
    assert b.finished and "ready" in b.describe("index:x")


def test_the_evaluation_for_the_analysis_tabs_runs_in_the_background(parts, tmp_path):
    from app.services import LockedEncoder
    from trace_core.evaluate import EvalConfig, evaluate

    data, model, encoder = parts
    cache = str(tmp_path / "cache")
    lent: list = []

    def job(enc):
        lent.append(enc)
        out = tmp_path / "eval"
        evaluate(enc, data, "test", "all", out, EvalConfig(counterfactual=True, cache_dir=cache))
        return out / "results.json", out / "queries.parquet"

    services = Services.load(model, data, "test", cache, encoder=encoder, embedding_map=True, background=True,
                             analysis_job=job)
    assert services.queries is None and "analysis" in services.build.stages
    _wait(services.build)
    stage = services.build.stages["analysis"]
    assert stage.state == "done", stage.error
    assert isinstance(lent[0], LockedEncoder)  # the model is lent batch by batch, not held for the whole run
    assert stage.done == stage.total == 2 * sum(len(t.queries) for t in services.tasks.values())
    assert services.benchmark is not None and len(services.queries)
    # the map came after the evaluation: the benchmark queries are on it
    assert (services.map.points["kind"] == "query (final)").sum() > 0
