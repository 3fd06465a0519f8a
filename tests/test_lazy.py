"""The lazily loaded TRACE-mini (`trace_core/lazy.py`): the page is built from the checkpoint's files, the weights
load afterwards, and what the loaded model computes is what an eagerly loaded one computes."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from app.building import status_markdown
from app.services import Services
from app.usecases import UserError, search, stream_explanation
from tests.mbeir_fixture import build_fixture
from tests.tiny_mini import build_tiny_mini
from trace_core.lazy import LazyEncoder, LoadError, default_precision, is_trace_encoder, peek
from trace_core.loading import load_model
from trace_core.prompts import TRACE_STYLE
from trace_core.records import Query


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return build_tiny_mini(tmp_path_factory.mktemp("lazy") / "mini")


@pytest.fixture(scope="module")
def eager(mini):
    return load_model(str(mini))


def test_the_files_give_the_loaded_models_fingerprint(mini, eager, tmp_path):
    assert peek(mini).fingerprint == eager.fingerprint
    assert peek(mini).max_cot_tokens == eager.max_cot_tokens
    # with a style file of its own, and a CoT cap from it
    styled = tmp_path / "styled"
    shutil.copytree(mini, styled)
    style = {**json.loads(TRACE_STYLE.to_json()), "max_cot_tokens": 40}
    (styled / "trace_style.json").write_text(json.dumps(style))
    assert peek(styled).fingerprint == load_model(str(styled)).fingerprint
    assert peek(styled).max_cot_tokens == 40 and peek(styled).style.max_cot_tokens == 40
    # not a TRACE-mini checkpoint, or unreadable: None, and the caller loads it as usual
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    assert peek(other) is None and LazyEncoder.of(other) is None
    assert peek(tmp_path / "nowhere") is None
    broken = tmp_path / "broken"
    shutil.copytree(mini, broken)
    (broken / "trace_mini.safetensors").write_bytes(b"\x00\x01")
    assert peek(broken) is None


def test_nothing_loads_before_start_and_then_it_computes_what_an_eager_model_does(mini, eager):
    calls = []

    def load():
        calls.append(1)
        return load_model(str(mini))

    lazy = LazyEncoder(mini, load, peek(mini))
    assert lazy.fingerprint == eager.fingerprint and lazy.style == eager.style
    assert lazy.max_cot_tokens == eager.max_cot_tokens and lazy.model_parts == ("lm", "efficientnet-lite0")
    assert not calls and not lazy.ready
    events = []
    lazy.on_load(lambda: events.append("started"), lambda err: events.append(("done", err)))
    lazy.start()
    queries = [Query(text="a dog on a sofa", instruction="find the image"), Query(text="a red bus")]
    got = lazy.encode_queries(queries, reasoning="always")  # waits for the load
    want = eager.encode_queries(queries, reasoning="always")
    assert lazy.ready and calls == [1] and lazy.load_seconds > 0
    assert events == ["started", ("done", None)]
    for a, b in zip(got, want, strict=True):
        assert a.cot == b.cot
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)
    late = []  # a listener that comes after the load hears both at once
    lazy.on_load(lambda: late.append("started"), lambda err: late.append(err))
    assert late == ["started", None]
    lazy.start()
    assert calls == [1]  # once


def test_files_that_would_not_load_are_left_to_the_eager_load(mini, tmp_path):
    """A truncated weights file or a missing LM folder: no LazyEncoder, so `app.py` loads eagerly and stops."""
    truncated = tmp_path / "truncated"
    shutil.copytree(mini, truncated)
    weights = truncated / "trace_mini.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # the header reads; the tensors are cut short
    assert peek(truncated) is None and LazyEncoder.of(truncated) is None
    with pytest.raises(Exception):  # noqa: B017 - the eager load's own error, whatever safetensors raises
        load_model(str(truncated))
    no_lm = tmp_path / "no-lm"
    shutil.copytree(mini, no_lm)
    shutil.rmtree(no_lm / "lm")
    assert peek(no_lm) is None


def test_a_failed_load_reaches_every_caller_with_its_message(mini, tmp_path):
    lazy = LazyEncoder(mini, lambda: (_ for _ in ()).throw(OSError("disk full")), peek(mini))
    errors = []
    lazy.on_load(lambda: None, errors.append)
    with pytest.raises(LoadError, match="could not be loaded: disk full"):
        lazy.encode_queries([Query(text="x")])  # starts the load itself, waits, fails
    assert lazy.failed is not None and not lazy.ready and len(errors) == 1
    with pytest.raises(LoadError, match="could not be loaded"):
        lazy.encode_candidates  # noqa: B018 - every later call fails the same way


def test_a_loaded_model_that_is_not_the_one_its_files_describe_is_refused(mini, eager, tmp_path):
    other = build_tiny_mini(tmp_path / "mini", seed=1)  # another checkpoint, same folder name
    lazy = LazyEncoder(mini, lambda: load_model(str(other)), peek(mini))
    with pytest.raises(RuntimeError, match="fingerprint"):
        lazy.wait(120)


def test_the_page_is_built_before_the_model_loads(mini, eager, tmp_path):
    from app.ui import build_app

    fx = build_fixture(tmp_path / "mbeir")
    cache = str(tmp_path / "cache")
    Services.load(str(mini), fx["root"], "test", cache, encoder=eager, embedding_map=False)  # indexes cached
    gate = threading.Event()

    def load():
        assert gate.wait(120)
        return load_model(str(mini))

    lazy = LazyEncoder(mini, load, peek(mini))
    services = Services.load(str(mini), fx["root"], "test", cache, encoder=lazy, embedding_map=False,
                             background=True)
    assert all(t.ready for t in services.tasks.values())  # the cached indexes matched the files' fingerprint
    assert services.start_batching(0.01, 4)
    build_app(services)  # nothing the page needs waits for the model
    import gradio as gr

    from app.links import LinkSlots
    from app.walkthrough_tab import build_walkthrough_tab

    with gr.Blocks():  # the walkthrough is built for it, with its deep-link slots, as for a loaded TRACE model
        assert isinstance(build_walkthrough_tab(services), LinkSlots)
    assert not lazy._started.is_set()
    assert services.build.state_of("model") == "running"  # the banner says it loads from the first page on
    assert "Loading the model (a search sent meanwhile waits for it): running" in status_markdown(services.build)
    lazy.start()
    gate.set()
    name = next(n for n, t in services.tasks.items() if t.takes_text and not t.takes_image)
    res = search(services, name, "a dog", None, None, "never", 3)  # waits for the load, then answers
    want = search(Services.load(str(mini), fx["root"], "test", cache, encoder=eager, embedding_map=False),
                  name, "a dog", None, None, "never", 3)
    assert [h.did for h in res.hits] == [h.did for h in want.hits]
    assert services.build.state_of("model") == "done" and services.build.finished
    # the walkthrough takes a lazily loaded TRACE-mini as the TRACE model it is
    assert is_trace_encoder(lazy) and is_trace_encoder(eager)
    *_, explained = stream_explanation(services, name, "a dog", None, None, "always", 0.0, 3)
    assert explained.search.hits and explained.walk.result.route == "reason"


def test_a_failed_load_is_a_clear_message_in_every_search_and_the_banner(mini, eager, tmp_path):
    fx = build_fixture(tmp_path / "mbeir")
    cache = str(tmp_path / "cache")
    Services.load(str(mini), fx["root"], "test", cache, encoder=eager, embedding_map=False)
    lazy = LazyEncoder(mini, lambda: (_ for _ in ()).throw(OSError("disk full")), peek(mini))
    services = Services.load(str(mini), fx["root"], "test", cache, encoder=lazy, embedding_map=False,
                             background=True)
    lazy.start()
    name = next(n for n, t in services.tasks.items() if t.takes_text and not t.takes_image)
    with pytest.raises(UserError, match="The model could not be loaded: disk full"):
        search(services, name, "a dog", None, None, "never", 3)
    with pytest.raises(UserError, match="could not be loaded"):
        list(stream_explanation(services, name, "a dog", None, None, "auto", 0.0, 3))
    assert services.build.state_of("model") == "failed"
    assert "disk full" in status_markdown(services.build)


def test_app_py_serves_first_and_loads_the_model_after(mini, eager, tmp_path, monkeypatch):
    """`python app.py` on a TRACE-mini: the page answers, the model loads in its thread, a search answers."""
    from gradio_client import Client

    from bench.serving import start_app

    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # the server's log in the order it was written
    fx = build_fixture(tmp_path / "mbeir")
    cache = str(tmp_path / "cache" / "index")
    served = load_model(str(mini), precision=default_precision(mini))  # int8 on a CPU: the app's default
    Services.load(str(mini), fx["root"], "test", cache, encoder=served, embedding_map=False)  # indexes cached
    proc, url, _, log = start_app(["--model", str(mini), "--mbeir-dir", str(fx["root"]), "--no-map",
                                   "--shipped-cache", "", "--cache-dir", cache], timeout=300)
    try:
        out = Client(url, verbose=False).predict("a dog on a sofa", None, "mscoco_task0", "never", 3,
                                                 api_name="/search")
        data = out if isinstance(out, dict) else json.loads(out)
        assert data["route"] == "direct" and len(data["hits"]) == 3
        assert data["model"] == peek(mini, precision=default_precision(mini)).fingerprint
        text = log.read_text()
        # the server listened before the model had loaded
        assert text.index("Running on local URL") < text.index("model loaded in")
    finally:
        proc.kill()
        proc.wait()


PAGE_WITHOUT_TORCH = """
import sys
from app.services import Services
from app.ui import build_app
from trace_core.lazy import LazyEncoder, default_precision
mini, root, cache = sys.argv[1:4]
precision = default_precision(mini)
lazy = LazyEncoder.of(mini, precision=precision)
services = Services.load(mini, root, "test", cache, encoder=lazy, embedding_map=False, background=True)
assert all(t.ready for t in services.tasks.values()), "an index was not found in the cache"
services.start_batching(0.01, 4)
build_app(services)
print(precision, sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_the_page_is_built_without_importing_torch(mini, tmp_path):
    """What app.py does before its page answers (services from the checkpoint's files and the cached indexes,
    every tab built) imports no torch: about 1.3 s of a warm start, spent after the page answers instead."""
    import subprocess
    import sys

    fx = build_fixture(tmp_path / "mbeir")
    cache = str(tmp_path / "cache")
    served = load_model(str(mini), precision=default_precision(mini))
    Services.load(str(mini), fx["root"], "test", cache, encoder=served, embedding_map=False)  # indexes cached
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", PAGE_WITHOUT_TORCH, str(mini), str(fx["root"]), cache],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    precision, imported = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert imported == "[]"  # not a single torch module
    assert precision == default_precision(mini)  # decided without torch as torch decides it


def test_once_torch_is_imported_cuda_is_asked_of_it(monkeypatch):
    import torch

    from trace_core import lazy

    assert lazy.cuda_available() == torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, whatever its device files
    shipped = Path(__file__).resolve().parents[1] / "assets" / "trace-mini"
    assert lazy.cuda_available() and lazy.default_precision(shipped) == "fp32"
