"""The Walkthrough: `trace_core.explain` against the encoder itself, and the tab's handlers, on tiny models.

The tiny TRACE-mini and Qwen2-VL are random (test models for the mechanics). Oracles are the encoder's own
`encode_queries`, the backbone's prefill/step, and the task's index.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from app.usecases import UserError
from app.walkthrough_tab import N_OUTPUTS, build_walkthrough_tab, run_walkthrough
from app.walkthrough_view import (
    EMB_COLOUR,
    decision_figure,
    decision_words,
    token_strip,
    walkthrough,
)
from tests.app_fixture import build_services
from trace_core.encoder import EncoderConfig
from trace_core.explain import Walkthrough, explain_query, first_step, stream_explain
from trace_core.records import CotDelta, InputError, Query

INSTR = "Find me an everyday image that matches the given caption."


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    return build_services(tmp_path_factory.mktemp("wt"), with_analysis=False)


@pytest.fixture(scope="module")
def encoder(services):
    return services.encoder


@pytest.fixture(scope="module")
def qwen(tiny_qwen_dir):
    from trace_core.loading import load_model

    return load_model(tiny_qwen_dir, config=EncoderConfig(max_cot_tokens=6))


def _query() -> Query:
    return Query(text="a dog sleeping on a red sofa", instruction=INSTR, qid="q")


def _image_query() -> Query:
    return Query(text="make it blue", image=Image.new("RGB", (40, 30), (200, 20, 20)), instruction=INSTR, qid="qi")


def _emb_highlight(fig: go.Figure) -> list[int]:
    colours = list(fig.data[0].marker.color)
    return [i for i, c in enumerate(colours) if c == EMB_COLOUR]


def _hidden_states_along(encoder, walk: Walkthrough) -> list[torch.Tensor]:
    """Oracle: the backbone's hidden state at the last prompt position, then after each fed CoT token."""
    bb = encoder.backbone
    out = bb.prefill([encoder.render_query(walk.query)], with_logits=True)
    states, state = [out.hidden[0]], out.state
    for t in walk.result.cot_token_ids:
        step = bb.step(state, torch.tensor([t]))
        states.append(step.hidden[0])
        state = step.state
    return states


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy()


# ------------------------------------------------------------------------------------------ explain
@pytest.mark.parametrize("which", ["mini", "qwen"])
def test_first_step_is_the_prefill_distribution_and_matches_the_encoder(which, encoder, qwen):
    enc = encoder if which == "mini" else qwen
    for query in (_query(), _image_query()):
        walk = explain_query(enc, query, "auto", 0.0, top=10)
        first = walk.first
        probs = [t.prob for t in first.top]
        assert len(first.top) == 10 and [t.rank for t in first.top] == list(range(1, 11))
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6 and min(probs) >= 0
        # P(<|emb|>) is the softmax of the prefill logits at emb_token_id, and the encoder's own p_emb
        bb = enc.backbone
        logits = bb.prefill([enc.render_query(query)]).logits[0].float()
        assert first.step.vocab_size == logits.shape[0]
        assert first.step.p_emb == pytest.approx(float(torch.softmax(logits, -1)[bb.emb_token_id]), rel=1e-5)
        [ref] = enc.encode_queries([query], "auto", 0.0)
        assert walk.route == ref.route and walk.result.route == first.route
        assert walk.p_emb == pytest.approx(ref.p_emb, rel=1e-5, abs=1e-9)
        assert first.step.margin == pytest.approx(ref.emb_margin, rel=1e-5, abs=1e-6)
        assert walk.result.first_step is first.step  # the encoder's own record, read and not recomputed
        np.testing.assert_allclose(walk.embedding, ref.embedding, atol=1e-5)
        assert walk.dim == bb.hidden_size and len(walk.embedding_head) == 8
        np.testing.assert_allclose(walk.embedding_head, ref.embedding[:8], atol=1e-5)
        # <|emb|>'s rank is consistent with the top list
        in_top = [t for t in first.top if t.is_emb]
        assert (first.step.emb_rank <= 10) == bool(in_top)
        if in_top:
            assert in_top[0].rank == first.step.emb_rank and in_top[0].prob == pytest.approx(first.step.p_emb)
        # the tokens are the prompt the model reads, images expanded
        assert first.prompt_length == len(bb.tokenize(enc.render_query(query)))
        assert (first.n_image_tokens > 0) == (query.image is not None)


def test_explain_runs_the_encoder_once(encoder, monkeypatch):
    bb = encoder.backbone
    calls = []
    real = bb.prefill
    monkeypatch.setattr(bb, "prefill", lambda *a, **k: calls.append(1) or real(*a, **k))
    explain_query(encoder, _query(), "always")
    assert len(calls) == 1  # the walkthrough's first step comes from the encoder's own prefill
    calls.clear()
    first_step(encoder, _query())
    assert len(calls) == 1


def test_never_pools_the_last_prompt_token(encoder):
    walk = explain_query(encoder, _query(), "never")
    assert walk.route == "direct" and walk.result.cot_tokens == 0 and walk.result.stop_reason == "direct"
    assert walk.pooled_index == walk.prompt_length - 1 and walk.pooled_kind == "last prompt token"
    assert walk.pooled_token == walk.first.tokens[-1]
    states = _hidden_states_along(encoder, walk)
    np.testing.assert_allclose(_unit(states[0]), walk.embedding, atol=1e-5)


@pytest.mark.parametrize("which", ["mini", "qwen"])
def test_always_pools_the_last_cot_token(which, encoder, qwen):
    enc = encoder if which == "mini" else qwen
    walk = explain_query(enc, _query(), "always")
    r = walk.result
    assert walk.route == "reason" and r.cot_tokens >= 1 and walk.first.route == "reason"
    assert walk.pooled_index == walk.prompt_length + r.cot_tokens - 1 and walk.pooled_kind == "last CoT token"
    assert walk.pooled_token == enc.backbone.token_text(r.cot_token_ids[-1]) == walk.cot_token_texts[-1]
    # the CoT starts with the best ordinary token of the first step
    assert r.cot_token_ids[0] == walk.first.best_other.token_id
    # and the embedding is the hidden state at the pooled position (prompt, then one state per fed CoT token)
    states = _hidden_states_along(enc, walk)
    np.testing.assert_allclose(_unit(states[walk.pooled_index - walk.prompt_length + 1]), walk.embedding, atol=1e-5)
    assert walk.direct_cosine == pytest.approx(float(np.dot(_unit(states[0]), walk.embedding)), abs=1e-5)


@pytest.mark.parametrize("mode", ["never", "always"])
def test_emb_token_pooling_pools_the_emb_token_itself(mode, tiny_qwen_dir):
    from trace_core.loading import load_model

    enc = load_model(tiny_qwen_dir, style="ume-r1", config=EncoderConfig(max_cot_tokens=4))
    walk = explain_query(enc, _query(), mode)
    r, n = walk.result, walk.prompt_length
    assert walk.pooling == "emb_token" and walk.route == ("direct" if mode == "never" else "reason")
    states = _hidden_states_along(enc, walk)  # positions n - 1 .. n + cot_tokens - 1
    if r.stop_reason in ("direct", "emb"):  # <gen_emb> was fed: its own state is the embedding
        assert walk.pooled_index == n + r.cot_tokens and walk.pooled_token == "<gen_emb>"
        state = enc.backbone.prefill([enc.render_query(walk.query)]).state
        for t in [*r.cot_token_ids, enc.backbone.emb_token_id]:
            out = enc.backbone.step(state, torch.tensor([t]))
            state = out.state
        np.testing.assert_allclose(_unit(out.hidden[0]), walk.embedding, atol=1e-5)
    else:  # cut at the cap (or an end token): the encoder keeps the last CoT token's state
        assert walk.pooled_index == n + r.cot_tokens - 1 and walk.pooled_kind == "last CoT token"
        np.testing.assert_allclose(_unit(states[-1]), walk.embedding, atol=1e-5)


def test_bias_moves_the_decision_in_auto_mode(encoder):
    direct = explain_query(encoder, _query(), "auto", routing_bias=1e4)
    assert direct.first.step.prefers_direct and direct.first.route == "direct" and direct.route == "direct"
    reason = explain_query(encoder, _query(), "auto", routing_bias=-1e4)
    assert not reason.first.step.prefers_direct and reason.first.route == "reason" and reason.route == "reason"
    # the model's own confidence is read before the bias
    assert direct.p_emb == pytest.approx(reason.p_emb)
    assert "embedded at once" in decision_words(direct.first) and "chain of thought" in decision_words(reason.first)
    # 'always' overrides a bias in favour of embedding
    assert explain_query(encoder, _query(), "always", routing_bias=1e4).route == "reason"


def test_stream_explain_yields_first_step_cot_then_the_walkthrough(encoder):
    events = list(stream_explain(encoder, _query(), "always"))
    assert events[0].route == "reason" and isinstance(events[-1], Walkthrough)
    deltas = [e for e in events if isinstance(e, CotDelta)]
    walk = events[-1]
    assert "".join(d.text for d in deltas) == walk.result.cot
    [ref] = encoder.encode_queries([_query()], "always")
    np.testing.assert_allclose(walk.embedding, ref.embedding, atol=1e-5)


def test_explain_rejects_bad_arguments(encoder):
    with pytest.raises(InputError, match="reasoning"):
        first_step(encoder, _query(), "sometimes")
    with pytest.raises(InputError, match="finite"):
        first_step(encoder, _query(), "auto", float("nan"))
    with pytest.raises(InputError, match="empty"):
        first_step(encoder, Query(text="  ", instruction=INSTR))


# ------------------------------------------------------------------------------------------ the tab
def test_handler_ranks_like_the_index_and_marks_gold(services):
    t = services.tasks["mscoco_task0"]
    q = t.queries[0]
    view = walkthrough(services, "mscoco_task0", q.text, None, None, "never", 0.0, 4, q.qid)
    scores, ids = t.index.search(view.walk.embedding, 4)
    assert [h.did for h in view.search.hits] == list(ids[0])
    np.testing.assert_allclose([h.score for h in view.search.hits], scores[0], atol=1e-6)
    assert [row[0] for row in view.table] == [1, 2, 3, 4] and [row[4] for row in view.table] == list(ids[0])
    gold = t.positives[q.qid]
    assert all((row[2] == "✓") == (row[4] in gold) for row in view.table)
    assert all(row[3].startswith("image · ") for row in view.table)  # what each image-only candidate is
    assert len(view.gallery) == 4  # a text -> image task shows the candidate images
    assert all("image · " in caption for _, caption in view.gallery)
    assert f"`{q.qid}`" in view.ranking_md and "rank **" in view.ranking_md
    # the same query through the encoder gives the same embedding
    [ref] = services.encoder.encode_queries([Query(text=q.text, instruction=t.instructions[0])], "never")
    np.testing.assert_allclose(view.walk.embedding, ref.embedding, atol=1e-5)
    outs = view.outputs()
    assert len(outs) == 11 and isinstance(outs[3], go.Figure)
    assert "Step 1" in outs[0] and "Step 2" in outs[2] and "Step 3" in outs[4] and "Step 4" in outs[6]
    assert "No chain of thought" in view.cot_md and f"token {view.walk.pooled_index}" in view.pooling_md
    assert "wt-pooled" in view.pooling_html


def test_handler_walks_an_image_and_text_query_that_reasons(services):
    t = services.tasks["cirr_task7"]
    q = t.queries[1]
    img = Image.open(services.image_path(q.image_path))
    view = walkthrough(services, "cirr_task7", q.text, img, None, "always", 0.0, 3, q.qid)
    w = view.walk
    assert w.route == "reason" and w.pooled_index == w.prompt_length + w.result.cot_tokens - 1
    assert "image tokens" in view.prompt_md and "wt-image" in view.tokens_html
    assert f"{w.result.cot_tokens} tokens" in view.cot_md and "wt-cot" in view.cot_html
    assert "Without reasoning, top-1 would have been" in view.ranking_md
    assert len(view.table) == 3


def test_figure_highlights_emb(services, encoder):
    view = walkthrough(services, "webqa_task1", "who painted the mona lisa?", None, None, "auto", 0.0, 2)
    fig = view.figure
    hi = _emb_highlight(fig)
    assert len(hi) == 1 and "<|emb|>" in fig.data[0].x[hi[0]]
    assert fig.data[0].y[hi[0]] == pytest.approx(view.walk.p_emb)
    # with the whole vocabulary listed, <|emb|> is in the top list and its bar is the highlighted one
    first = first_step(encoder, _query(), top=100_000)
    assert len(first.top) == first.step.vocab_size
    fig = decision_figure(first)
    assert _emb_highlight(fig) == [first.step.emb_rank - 1] and len(fig.data[0].x) == first.step.vocab_size
    assert list(fig.data[0].customdata)[first.step.emb_rank - 1] == encoder.backbone.emb_token_id


def test_token_strip_collapses_image_runs_and_caps_long_prompts():
    tokens = ["<|im_start|>", "user", *["<|image_pad|>"] * 64, "hi", "<|im_end|>"]
    strip = token_strip(tokens, "<|emb|>")
    assert "×64" in strip and "2–65" in strip and strip.count("wt-image") == 1
    long = token_strip([f"t{i}" for i in range(1000)], "<|emb|>", cap=30)
    assert long.count("class='wt-tok") == 31 and "970 tokens in the middle are hidden" in long
    assert ">t999<" in long  # the last token (the pooled one on the direct route) stays visible
    assert "&lt;b&gt;" in token_strip(["<b>"], "<|emb|>")  # token text is escaped


def test_bad_input_is_a_clear_message_and_the_handler_keeps_working(services):
    with pytest.raises(UserError, match="empty"):
        walkthrough(services, "mscoco_task0", "   ", None, None)
    with pytest.raises(UserError, match="takes a text query"):
        walkthrough(services, "mscoco_task0", "a dog", Image.new("RGB", (8, 8)), None)
    with pytest.raises(UserError, match="reasoning must be one of"):
        walkthrough(services, "mscoco_task0", "a dog", None, None, "sometimes")
    with pytest.raises(UserError, match="finite"):
        walkthrough(services, "mscoco_task0", "a dog", None, None, "auto", float("inf"))
    with pytest.raises(UserError, match="unknown task"):
        walkthrough(services, "nope_task1", "a dog", None, None)
    import gradio as gr

    with pytest.warns(UserWarning, match="empty"):  # a warning; every output keeps what it shows
        [kept] = list(run_walkthrough(services, "mscoco_task0", None, "", None, "auto", 0.0, 5, ""))
    assert len(kept) == N_OUTPUTS and all(o == gr.skip() for o in kept)
    assert not services.model_lock.locked()
    outs = list(run_walkthrough(services, "webqa_task1", None, "who?", None, "always", 0.0, 2, ""))
    assert len(outs[0]) == N_OUTPUTS and isinstance(outs[0][3], go.Figure)  # steps 1 and 2 come first
    assert len(outs[-1]) == N_OUTPUTS and len(outs[-1][9]) == 2


def test_examples_are_benchmark_queries_of_the_task(services):
    from app.first_visit import example_queries

    t = services.tasks["cirr_task7"]
    ex = example_queries(services, "cirr_task7", 8)  # no evaluation loaded: the first queries, unranked
    assert ex and len(ex) <= 8 and [e.qid for e in ex] == [q.qid for q in t.queries[:len(ex)]]
    assert all(e.image and e.text and e.gold_rank is None for e in ex)
    t.labels.update({ex[2].qid: "reason"})
    try:
        ex2 = example_queries(services, "cirr_task7", 4)
        # simple and complex alternate, so the one complex query moves up to second place
        assert [e.qid for e in ex2] == [ex[0].qid, ex[2].qid, ex[1].qid, ex[3].qid]
        assert ex2[1].difficulty == "complex" and "complex" in ex2[1].result
    finally:
        t.labels.pop(ex[2].qid)


def test_tab_builds_with_model_calls_in_the_model_queue(services):
    import gradio as gr

    with gr.Blocks() as demo:
        with gr.Tab("Walkthrough"):
            build_walkthrough_tab(services)
    model_fns = [f for f in demo.fns.values() if f.concurrency_id == "model"]
    # walk through (button, example, deep link) and re-embed (button, blank, another query's thought)
    assert len(model_fns) == 6 and all(f.concurrency_limit == 1 for f in model_fns)
    assert all(f.api_visibility == "private" for f in demo.fns.values())


# ------------------------------------------------------------------------------------------ the figure's data
def test_the_figures_csv_is_the_table_it_is_drawn_from(services, encoder):
    import pandas as pd

    from app.walkthrough_tab import FIGURE
    from app.walkthrough_view import FRAME_COLUMNS, decision_frame

    first = first_step(encoder, _query(), top=10)
    frame = decision_frame(first)
    fig = decision_figure(first, frame)
    assert list(frame.columns) == FRAME_COLUMNS and len(frame) == len(fig.data[0].y)
    np.testing.assert_allclose(list(fig.data[0].y), frame["probability"])
    assert list(fig.data[0].customdata) == list(frame["token_id"])
    assert [c == EMB_COLOUR for c in fig.data[0].marker.color] == [k == "emb" for k in frame["kind"]]
    assert list(frame["rank"]) == [t.rank for t in first.top] + ([] if frame["kind"].iloc[:10].eq("emb").any()
                                                                 else [first.step.emb_rank])
    # <|emb|> is always a row: in the top, or added after it with its own rank and probability
    emb = frame[frame["kind"] == "emb"].iloc[0]
    assert emb["token_id"] == encoder.backbone.emb_token_id and emb["probability"] == pytest.approx(first.step.p_emb)
    # the same figure as before the table existed (built from the first step alone)
    assert decision_figure(first).to_dict() == fig.to_dict()
    # the handler sends the CSV with the figure, written whole, under the figure's name
    outs = list(run_walkthrough(services, "webqa_task1", None, "who painted it?", None, "auto", 0.0, 3, ""))
    button = outs[0][11]
    path = button.value["path"]
    assert button.visible and path.endswith("/walkthrough-first-step-next-token-probabilities.csv"), FIGURE
    csv = pd.read_csv(path, keep_default_na=False)
    assert list(csv.columns) == FRAME_COLUMNS
    np.testing.assert_allclose(csv["probability"], outs[0][3].data[0].y, rtol=1e-6)


# ------------------------------------------------------------------------------------------ the CoT by hand
def test_a_walkthrough_keeps_its_query_so_its_thought_can_be_edited(services):
    import gradio as gr

    from app.display import BEFORE_AFTER_HEADERS, before_after_rows
    from app.usecases import edit_cot, search, search_with_cot
    from app.walkthrough_tab import run_edit

    t = services.tasks["mscoco_task0"]
    q = t.queries[1]
    view = walkthrough(services, "mscoco_task0", q.text, None, None, "always", 0.0, 4, q.qid)
    before = view.search
    assert before.query is not None and before.query.qid == q.qid and before.query.text == q.text
    assert before.query is view.walk.query  # the query the model read, not a copy built again
    # the walkthrough's ranking is the search's with the same thought
    own = search(services, "mscoco_task0", q.text, None, None, "always", 4, q.qid)
    assert [h.did for h in before.hits] == [h.did for h in own.hits] and before.gold_rank == own.gold_rank
    # blank: embedded at once, so the gold lands where reasoning off puts it
    direct = search(services, "mscoco_task0", q.text, None, None, "never", 4, q.qid)
    md, table, note = run_edit(services, before, "")
    assert f"Gold rank **{own.gold_rank} → {direct.gold_rank}** with a blank CoT" in md and note == ""
    assert "the walkthrough's top-4" in md
    assert table.visible and [r[0] for r in table.value["data"]] == [1, 2, 3, 4]
    # a thought by hand: the ranking of that embedding, side by side with the model's own
    thought = "A photo of an animal indoors."
    written = search_with_cot(services, "mscoco_task0", q.text, None, None, thought, 4, q.qid)
    md, table, _ = run_edit(services, before, thought)
    assert f"Gold rank **{own.gold_rank} → {written.gold_rank}** with the edited CoT" in md
    rows = before_after_rows(edit_cot(services, before, thought))
    assert len(BEFORE_AFTER_HEADERS) == 3 and len(rows) == 4
    for (r, b, a), hb, ha in zip(rows, before.hits, written.hits, strict=True):
        assert r == hb.rank == ha.rank
        assert hb.caption in b and ha.caption in a and f"({ha.score:.3f})" in a
        assert a.startswith("✓ ") == ha.gold and b.startswith("✓ ") == hb.gold
        assert a.endswith("(new)") == (ha.did not in {h.did for h in before.hits})
    # mistakes: a warning and a note; the last results stay
    with pytest.warns(UserWarning, match="too long"):
        md, table, note = run_edit(services, before, "x" * 2100)
    assert md == gr.skip() and table == gr.skip() and "too long" in note
    with pytest.warns(UserWarning, match="first"):
        assert run_edit(services, None, "a thought")[0] == gr.skip()


def test_another_querys_thought_needs_an_evaluation(services):
    import dataclasses

    import gradio as gr
    import pandas as pd

    from app.walkthrough_tab import borrow_cot

    t = services.tasks["mscoco_task0"]
    view = walkthrough(services, "mscoco_task0", t.queries[0].text, None, None, "never", 0.0, 3, t.queries[0].qid)
    with pytest.warns(UserWarning, match="No evaluation is loaded"):  # this fixture loads none
        box, note, go_on = borrow_cot(services, view.search)
    assert box == gr.skip() and "No evaluation" in note and go_on is False
    with pytest.warns(UserWarning, match="Walk through a query first"):
        assert borrow_cot(services, None)[2] is False
    other = t.queries[2]
    table = pd.DataFrame({"pair": ["mscoco_task0"] * 2, "qid": [t.queries[0].qid, other.qid],
                          "cot": ["its own", "someone else's thought"]})
    box, note, go_on = borrow_cot(dataclasses.replace(services, queries=table), view.search)
    assert box == "someone else's thought" and other.qid in note and go_on is True


def test_the_edit_section_opens_after_a_walkthrough_with_the_models_thought(services):
    outs = list(run_walkthrough(services, "webqa_task1", None, "who painted it?", None, "always", 0.0, 3, ""))
    walked, section, box, md, table, note = outs[0][12:]
    assert walked is None and section.visible is False and not table.visible  # hidden while the model runs
    walked, section, box, md, table, note = outs[-1][12:]
    assert section.visible is True and walked.result.cot == box and box and table.visible is False
    assert md == "" and note == ""


def test_a_deep_link_fills_the_walkthrough_and_runs_it(services):
    import gradio as gr

    from app.links import Restored, View

    with gr.Blocks() as demo:
        slots = build_walkthrough_tab(services)
    task, text, qid, mode, bias = slots.fields
    assert isinstance(task, gr.Dropdown) and isinstance(slots.restore, gr.State) and isinstance(bias, gr.Slider)
    apply = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "apply_link")
    t = services.tasks["cirr_task7"]
    q = t.queries[0]
    out = apply(Restored(View("walkthrough", "cirr_task7", "", q.qid, "always", -1.5), (), True))
    assert out[0] == "cirr_task7" and out[1].value == q.text and out[2].value is not None  # its image
    assert out[3:] == (q.qid, t.instructions[0], "always", -1.5, True)
    out = apply(Restored(View("walkthrough", "webqa_task1", "who?"), (), True))
    assert out[1].value == "who?" and out[2].value is None and out[3] == "" and out[-1] is True
    assert all(o == gr.skip() for o in apply(None)[:-1]) and apply(None)[-1] is False
    # a new task keeps a benchmark query of its own (a link sets both at once; the qid State is read when the
    # handler runs) and drops any other; it never sends the query text back (the value it would read can be
    # older than the event that set the task), only hides and clears it where the task takes no text
    change = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "change_task")
    _, instr, kept, text_out, image_out = change("cirr_task7", q.qid)
    assert kept == q.qid and text_out.constructor_args == {"visible": True} and image_out.visible is True
    _, instr, kept, text_out, image_out = change("webqa_task1", q.qid)
    assert kept == "" and instr == services.tasks["webqa_task1"].instructions[0]
    assert image_out.visible is False and image_out.value is None and text_out.constructor_args["visible"] is True
