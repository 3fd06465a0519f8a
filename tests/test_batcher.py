"""The micro-batching queue: concurrent visitors share a batch, and each gets exactly what a call alone gives."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

import trace_core
from trace_core import CotDelta, EncoderConfig, InputError, Query, QueryResult
from trace_core.batcher import MicroBatcher

INSTR = "Find me an everyday image that matches the given caption."


@pytest.fixture()
def encoder(tiny_qwen_dir):
    return trace_core.load_model(tiny_qwen_dir, config=EncoderConfig(max_cot_tokens=6))


def _queries() -> list[Query]:
    texts = ["a dog sleeping on a red sofa", "a window", "sofa", "two cats on a wall at night", "a red car",
             "make the sky purple and add a moon"]
    out = [Query(text=t, instruction=INSTR, qid=f"q{i}") for i, t in enumerate(texts)]
    out.append(Query(text="make it blue", image=Image.new("RGB", (64, 48), (10, 200, 30)), instruction=INSTR,
                     qid="q-img"))
    return out


# Each visitor's own settings: modes, biases and guards differ inside one batch.
SETTINGS = [("auto", 0.0, None), ("always", 0.0, 2), ("never", 0.0, None), ("auto", -50.0, None),
            ("always", 1.5, None), ("auto", 50.0, 0), ("always", 0.0, None)]


def _concurrently(batcher: MicroBatcher, queries, settings) -> list[list]:
    """Every query streamed from its own thread, all released at once; each thread's events, in order."""
    out: list[list] = [[] for _ in queries]
    start = threading.Barrier(len(queries))

    def visit(i: int) -> None:
        mode, bias, guard = settings[i]
        start.wait()
        out[i] = list(batcher.stream(queries[i], mode, bias, no_repeat_ngram=guard))

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def test_concurrent_queries_share_batches_and_match_calls_alone(encoder):
    queries = _queries()
    alone = [list(encoder.stream_query(q, m, b, no_repeat_ngram=g)) for q, (m, b, g) in zip(queries, SETTINGS,
                                                                                             strict=True)]
    batcher = MicroBatcher(encoder, threading.Lock(), window_s=0.5, max_batch=16)
    together = _concurrently(batcher, queries, SETTINGS)
    assert batcher.stats.queries == len(queries)
    assert batcher.stats.batches < len(queries), "concurrent queries were not batched"
    routes = set()
    for a, b in zip(alone, together, strict=True):
        fa, fb = a[-1], b[-1]
        assert isinstance(fb, QueryResult)
        routes.add(fb.route)
        assert (fb.route, fb.cot_token_ids, fb.stop_reason, fb.reasoning, fb.routing_bias, fb.no_repeat_ngram) == \
            (fa.route, fa.cot_token_ids, fa.stop_reason, fa.reasoning, fa.routing_bias, fa.no_repeat_ngram)
        np.testing.assert_allclose(fb.embedding, fa.embedding, atol=1e-4)
        np.testing.assert_allclose(fb.direct_embedding, fa.direct_embedding, atol=1e-4)
        # The visitor reads their own chain of thought as it is written, in the same pieces as alone.
        assert [(d.text, d.n_tokens) for d in b if isinstance(d, CotDelta)] == \
            [(d.text, d.n_tokens) for d in a if isinstance(d, CotDelta)]
    assert routes == {"direct", "reason"}


def test_first_step_is_sent_only_to_who_asked(encoder):
    batcher = MicroBatcher(encoder, window_s=0.0)
    q = _queries()[0]
    with_first = list(batcher.stream(q, "auto", first_step=True))
    without = list(batcher.stream(q, "auto"))
    assert type(with_first[0]).__name__ == "FirstStep" and with_first[0].route == with_first[-1].route
    assert not any(type(e).__name__ == "FirstStep" for e in without)


def test_a_bad_query_fails_alone_and_the_batcher_keeps_serving(encoder, tmp_path):
    batcher = MicroBatcher(encoder, window_s=0.0)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError):
        list(batcher.stream(Query(text="x", image=str(bad), instruction=INSTR), "auto"))
    with pytest.raises(InputError):
        list(batcher.stream(_queries()[0], "sometimes"))
    assert batcher.encode(_queries()[1], "never").route == "direct"


def test_a_failing_batch_reaches_every_waiting_visitor(encoder):
    """A model error inside a batch must reach each of its visitors as an exception, never a hang."""
    batcher = MicroBatcher(encoder, window_s=0.0)
    real = encoder._run

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    encoder._run = broken
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            list(batcher.stream(_queries()[0], "auto"))
    finally:
        encoder._run = real
    assert isinstance(batcher.encode(_queries()[0], "always"), QueryResult)


def test_per_row_settings_are_checked(encoder):
    with pytest.raises(InputError):
        encoder.encode_queries(_queries()[:2], reasoning="auto", routing_bias=float("nan"))
    with pytest.raises(InputError, match="2 values for 3 queries"):
        list(encoder._run(_queries()[:3], ["auto", "never"], 0.0))


@pytest.mark.parametrize("workers", [1, 2])
def test_searches_of_concurrent_visitors_go_through_one_batch_with_the_same_hits(tmp_path, workers):
    from app.usecases import search
    from tests.app_fixture import build_services

    services = build_services(tmp_path, with_analysis=False)
    task = next(t for t in services.tasks.values() if t.takes_text and not t.takes_image)
    texts = [q.text for q in task.queries if q.text][:6]
    modes = ["auto", "always", "never", "auto", "always", "never"][: len(texts)]
    alone = [search(services, task.name, t, None, None, m, 5) for t, m in zip(texts, modes, strict=True)]
    assert services.start_batching(window_s=0.5, workers=workers)
    assert services.batcher.workers == workers  # gradio lets each worker fill a batch
    assert services.search_concurrency["concurrency_limit"] == services.batcher.max_batch * workers
    together: list = [None] * len(texts)
    start = threading.Barrier(len(texts))

    def visit(i: int) -> None:
        start.wait()
        together[i] = search(services, task.name, texts[i], None, None, modes[i], 5)

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert services.batcher.stats.largest > 1
    for a, b in zip(alone, together, strict=True):
        assert [h.did for h in b.hits] == [h.did for h in a.hits]
        np.testing.assert_allclose([h.score for h in b.hits], [h.score for h in a.hits], atol=1e-4)
        assert b.result.cot == a.result.cot and b.result.route == a.result.route
    # the batch lets go of the model (a visitor may hear its result just before the worker leaves the lock)
    assert services.model_lock.acquire(timeout=10)
    services.model_lock.release()


def _served_with_batching(tmp_path, n: int):
    """The app on the test fixture with the batcher on (a 1 s window: calls sent together meet), its URL, a text
    task and n of its query texts."""
    from app.ui import build_app
    from tests.app_fixture import build_services

    services = build_services(tmp_path, with_analysis=False)
    assert services.start_batching(window_s=1.0, max_batch=8)
    task = next(t for t in services.tasks.values() if t.takes_text and not t.takes_image)
    demo = build_app(services)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    return services, demo, url, task, [q.text for q in task.queries if q.text][:n]


def _all_at_once(url: str, calls: list, timeout: float = 180) -> list:
    """Each call(client) from a gradio_client of its own, all released together; their outputs in order."""
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in calls]
    out: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def visit(i: int) -> None:
        start.wait()
        out[i] = calls[i](clients[i])

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return out


def test_the_served_search_api_batches_concurrent_clients(tmp_path):
    """Through Gradio: search events may run together when the batcher is on, and they meet in one batch."""
    services, demo, url, task, texts = _served_with_batching(tmp_path, 4)
    try:
        out = _all_at_once(url, [lambda c, t=t: c.predict(t, None, task.name, "always", 3, api_name="/search")
                                 for t in texts])
        assert all(o is not None and len(o["hits"]) == 3 and o["route"] == "reason" for o in out)
        assert services.batcher.stats.queries == len(texts)
        assert services.batcher.stats.largest > 1, "Gradio ran the searches one at a time"
    finally:
        demo.close()


def test_compare_and_map_placement_wait_in_the_searches_queue_and_share_their_batches(tmp_path):
    """Their model work is searches through the batcher: concurrent /compare calls run together and their
    searches meet in one batch (in the one-at-a-time "model" queue they waited behind every other model call)."""
    services, demo, url, task, texts = _served_with_batching(tmp_path, 3)
    try:
        placing = [f for f in demo.fns.values() if f.api_name == "map_place"]
        assert placing and all(f.concurrency_id == "search" and f.concurrency_limit == 8 for f in placing)
        out = _all_at_once(url, [lambda c, t=t: c.predict(t, None, task.name, 3, api_name="/compare")
                                 for t in texts])
        assert all(isinstance(o, str) and o for o in out)
        assert services.batcher.stats.queries == 2 * len(texts)  # each compares: reasoning off, then on
        assert services.batcher.stats.largest > 1, "Gradio ran the comparisons one at a time"
    finally:
        demo.close()


def test_a_direct_query_does_not_wait_for_its_batch_s_chains_of_thought(encoder):
    batcher = MicroBatcher(encoder, window_s=0.5)
    q = _queries()
    done: dict[str, float] = {}
    start = threading.Barrier(2)

    def visit(name: str, query, mode: str) -> None:
        start.wait()
        for _ in batcher.stream(query, mode):
            pass
        done[name] = time.perf_counter()

    slow = threading.Thread(target=visit, args=("always", q[0], "always"))
    fast = threading.Thread(target=visit, args=("never", q[1], "never"))
    real = encoder.backbone.step

    def slow_step(*args, **kwargs):  # each decoding step takes a visible while; the prefill does not
        time.sleep(0.2)
        return real(*args, **kwargs)

    encoder.backbone.step = slow_step
    try:
        slow.start(), fast.start()
        slow.join(60), fast.join(60)
    finally:
        encoder.backbone.step = real
    assert batcher.stats.largest == 2
    assert done["always"] - done["never"] > 0.5  # the direct one left at the prefill, before 6 slow steps


def test_the_model_gate_lets_batches_share_and_other_calls_run_alone():
    from trace_core.batcher import ModelGate

    gate = ModelGate(2)
    inside, third_in, exclusive_in = threading.Event(), threading.Event(), threading.Event()
    release = threading.Event()

    def batch(flag=None):
        with gate.shared():
            if flag is not None:
                flag.set()
            inside.set()
            release.wait(10)

    first, second = threading.Thread(target=batch), threading.Thread(target=batch)
    first.start(), second.start()
    assert inside.wait(5)
    time.sleep(0.2)
    assert gate.locked() and gate._batches == 2  # two batches at once
    third = threading.Thread(target=batch, args=(third_in,))
    third.start()
    assert not third_in.wait(0.3)  # a third waits for one of them
    assert gate.acquire(timeout=0.2) is False  # a call alone waits for the batches
    waiter = threading.Thread(target=lambda: (gate.acquire(), exclusive_in.set(), release.wait(10), gate.release()))
    release.set()
    waiter.start()
    for t in (first, second, third, waiter):
        t.join(10)
    assert third_in.is_set() and exclusive_in.is_set() and not gate.locked()
    with pytest.raises(RuntimeError):
        gate.release()


def test_a_waiting_call_alone_goes_before_later_batches():
    from trace_core.batcher import ModelGate

    gate = ModelGate(2)
    order: list[str] = []
    holding, done = threading.Event(), threading.Event()

    def first_batch():
        with gate.shared():
            holding.set()
            done.wait(10)

    def alone():
        with gate:
            order.append("alone")

    def later_batch():
        with gate.shared():
            order.append("batch")

    threads = [threading.Thread(target=first_batch)]
    threads[0].start()
    assert holding.wait(5)
    threads.append(threading.Thread(target=alone))
    threads[-1].start()
    time.sleep(0.2)  # the call alone now waits for the first batch
    threads.append(threading.Thread(target=later_batch))
    threads[-1].start()
    time.sleep(0.2)
    assert order == []  # the later batch does not slip in before the waiting call alone
    done.set()
    for t in threads:
        t.join(10)
    assert order == ["alone", "batch"]


def test_two_workers_run_two_batches_at_once_with_the_same_results(encoder):
    from trace_core.batcher import ModelGate

    queries = _queries()[:4]
    settings = SETTINGS[:4]
    alone = [list(encoder.stream_query(q, m, b, no_repeat_ngram=g)) for q, (m, b, g) in zip(queries, settings,
                                                                                             strict=True)]
    run, meet = encoder._run, threading.Barrier(2)
    together = {"most": 0, "now": 0}
    lock = threading.Lock()

    def counted(*args, **kwargs):  # the real decoding loop; two batches must be in it at the same moment
        with lock:
            together["now"] += 1
            together["most"] = max(together["most"], together["now"])
        try:
            meet.wait(timeout=20)
            yield from run(*args, **kwargs)
        finally:
            with lock:
                together["now"] -= 1

    encoder._run = counted
    batcher = MicroBatcher(encoder, ModelGate(2), window_s=0.3, max_batch=2, workers=2)
    got = _concurrently(batcher, queries, settings)
    assert together["most"] == 2 and batcher.stats.batches == 2 and batcher.stats.queries == 4
    for a, b in zip(alone, got, strict=True):
        assert b[-1].cot_token_ids == a[-1].cot_token_ids and b[-1].route == a[-1].route
        np.testing.assert_allclose(b[-1].embedding, a[-1].embedding, atol=1e-4)
