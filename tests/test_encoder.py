"""The TRACE encoder on a tiny random Qwen2-VL, checked against hand computations.

Oracles use the model's own full forward pass (no KV cache, positions computed by the model), so they are
independent of the encoder's prefill/step/select path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import trace_core
from trace_core import Candidate, CotDelta, EncoderConfig, InputError, Query, QueryResult

INSTR_T2I = "Find me an everyday image that matches the given caption."
INSTR_CIR = "Retrieve a day-to-day image that aligns with the modification instructions of the provided image."


def _img(w: int, h: int, colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def _queries() -> list[Query]:
    return [
        Query(text="a dog sleeping on a red sofa", instruction=INSTR_T2I, qid="q0"),
        Query(text="make the car blue", image=_img(70, 90, (10, 200, 30)), instruction=INSTR_CIR, qid="q1"),
        Query(image=_img(112, 56, (200, 10, 10)), instruction="Find a caption for the image.", qid="q2"),
        Query(text="a window", instruction=INSTR_T2I, qid="q3"),
        Query(text="remove the people in the background and make it night", image=_img(60, 60, (1, 2, 3)),
              instruction=INSTR_CIR, qid="q4"),
        Query(text="sofa", instruction=INSTR_T2I, qid="q5"),
    ]


@pytest.fixture()
def encoder(tiny_qwen_dir):
    return trace_core.load_model(tiny_qwen_dir, config=EncoderConfig(max_cot_tokens=6))


def _full_forward(encoder, query_or_candidate, extra_ids: tuple[int, ...] = ()):
    """Oracle: last-layer hidden state [H] and logits [V] at the last position of prompt + extra tokens."""
    bb = encoder.backbone
    if isinstance(query_or_candidate, Query):
        prompt = encoder.render_query(query_or_candidate)
    else:
        prompt = encoder.render_candidate(query_or_candidate)
    inputs = bb._inputs([prompt])
    if extra_ids:
        extra = torch.tensor([list(extra_ids)])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra).int()], 1)
    bb.model.model.rope_deltas = None
    with torch.no_grad():
        out = bb.model(**inputs, output_hidden_states=True)
    return out.hidden_states[-1][0, -1], out.logits[0, -1]


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


def _margins(encoder, queries) -> np.ndarray:
    """Oracle routing margin: <|emb|> logit minus the best other non-stop logit at the first step."""
    bb = encoder.backbone
    out = []
    for q in queries:
        _, logits = _full_forward(encoder, q)
        others = logits.clone()
        others[[bb.emb_token_id, *bb.stop_token_ids]] = -torch.inf
        out.append(float(logits[bb.emb_token_id] - others.max()))
    return np.array(out)


def test_route_is_first_step_argmax_with_bias(encoder):
    queries = _queries()
    margins = _margins(encoder, queries)
    # Shift the decision so that about half of the queries route direct.
    bias = -float(np.median(margins)) + 1e-3
    results = encoder.encode_queries(queries, reasoning="auto", routing_bias=bias)
    expected = ["direct" if m + bias > 0 else "reason" for m in margins]
    assert [r.route for r in results] == expected
    assert {"direct", "reason"} == set(expected)
    for r, q in zip(results, queries, strict=True):
        assert r.qid == q.qid and r.routing_bias == bias
        if r.route == "direct":
            assert r.cot == "" and r.cot_tokens == 0 and r.stop_reason == "direct"


def test_direct_embedding_is_last_prompt_hidden_state(encoder):
    queries = _queries()
    results = encoder.encode_queries(queries, reasoning="never")
    for q, r in zip(queries, results, strict=True):
        hidden, logits = _full_forward(encoder, q)
        np.testing.assert_allclose(r.embedding, _unit(hidden), atol=1e-5)
        assert r.embedding.dtype == np.float32 and abs(np.linalg.norm(r.embedding) - 1) < 1e-5
        p = torch.softmax(logits, -1)[encoder.backbone.emb_token_id]
        assert r.p_emb == pytest.approx(float(p), rel=1e-4)


def test_reasoning_embeds_the_token_before_emb(encoder):
    """Make <|emb|> the greedy choice right after the first CoT token, then check the pooled position."""
    bb = encoder.backbone
    q = _queries()[1]
    free = encoder.encode_queries([q], reasoning="always")[0]
    assert free.cot_tokens == 6 and free.stop_reason == "max_tokens"
    t1, t2 = free.cot_token_ids[:2]
    head = bb.model.lm_head.weight
    with torch.no_grad():
        head[bb.emb_token_id] = 3 * head[t2]  # at step 2, where t2 was the argmax, <|emb|> now wins
    r = encoder.encode_queries([q], reasoning="always")[0]
    assert r.route == "reason" and r.stop_reason == "emb" and not r.truncated
    assert r.cot_token_ids == (t1,) and r.cot == bb.decode([t1])
    hidden, logits = _full_forward(encoder, q, (t1,))
    assert int(logits.argmax()) == bb.emb_token_id
    np.testing.assert_allclose(r.embedding, _unit(hidden), atol=1e-5)


def test_truncation_forces_emb_after_the_cap(encoder):
    queries = _queries()[:3]
    results = encoder.encode_queries(queries, reasoning="always")
    for q, r in zip(queries, results, strict=True):
        assert r.route == "reason" and r.truncated
        if r.stop_reason == "max_tokens":
            assert r.cot_tokens == 6
        hidden, _ = _full_forward(encoder, q, r.cot_token_ids)
        np.testing.assert_allclose(r.embedding, _unit(hidden), atol=1e-5)


def test_batching_equals_one_by_one(encoder):
    bb = encoder.backbone
    queries = _queries()
    # Rows must leave the decoding batch at different steps: <|emb|> shares the head row of a common token.
    probe = encoder.encode_queries(queries, reasoning="always")
    common = max({t for r in probe for t in r.cot_token_ids},
                 key=lambda t: sum(t in r.cot_token_ids for r in probe))
    with torch.no_grad():
        bb.model.lm_head.weight[bb.emb_token_id] = 3 * bb.model.lm_head.weight[common]
    bias = -float(np.median(_margins(encoder, queries)))
    batched = encoder.encode_queries(queries, reasoning="auto", routing_bias=bias, batch_size=8)
    single = [encoder.encode_queries([q], reasoning="auto", routing_bias=bias)[0] for q in queries]
    assert len({r.cot_tokens for r in batched}) > 2, "precondition: rows finish at different steps"
    for b, s in zip(batched, single, strict=True):
        assert (b.route, b.cot_token_ids, b.stop_reason) == (s.route, s.cot_token_ids, s.stop_reason)
        np.testing.assert_allclose(b.embedding, s.embedding, atol=1e-4)
        assert b.p_emb == pytest.approx(s.p_emb, rel=1e-3)


def test_streaming_equals_non_streaming(encoder):
    for q in _queries()[:3]:
        events = list(encoder.stream_query(q, reasoning="always"))
        final = events[-1]
        assert isinstance(final, QueryResult)
        deltas = [e for e in events[:-1] if isinstance(e, CotDelta)]
        assert len(deltas) == len(events) - 1 and deltas
        assert "".join(d.text for d in deltas) == final.cot
        assert [d.n_tokens for d in deltas] == sorted(d.n_tokens for d in deltas)
        plain = encoder.encode_queries([q], reasoning="always")[0]
        assert plain.cot_token_ids == final.cot_token_ids
        np.testing.assert_allclose(plain.embedding, final.embedding, atol=1e-5)


def test_modes_never_and_always(encoder):
    queries = _queries()
    assert {r.route for r in encoder.encode_queries(queries, reasoning="never")} == {"direct"}
    always = encoder.encode_queries(queries, reasoning="always", routing_bias=1e6)
    assert all(r.route == "reason" and r.cot_tokens >= 1 for r in always)
    assert {r.route for r in encoder.encode_queries(queries, routing_bias=1e6)} == {"direct"}
    assert {r.route for r in encoder.encode_queries(queries, routing_bias=-1e6)} == {"reason"}


def test_candidates_never_reason_and_pool_last_prompt_position(encoder):
    cands = [
        Candidate(text="a dog sleeping on a red sofa", did="9:1"),
        Candidate(image=_img(80, 60, (0, 0, 255)), did="9:2"),
        Candidate(text="a blue car", image=_img(56, 112, (9, 9, 9)), did="9:3"),
        Candidate(text="window", did="9:4"),
    ]
    batched = encoder.encode_candidates(cands, batch_size=4)
    assert batched.shape == (4, 32) and batched.dtype == np.float32
    for c, row in zip(cands, batched, strict=True):
        hidden, _ = _full_forward(encoder, c)
        np.testing.assert_allclose(row, _unit(hidden), atol=1e-4)
    np.testing.assert_allclose(encoder.encode_candidates(cands, batch_size=1), batched, atol=1e-4)
    prompt = encoder.render_candidate(cands[0]).text
    assert "Your output must only be <|emb|>" in prompt


def test_bad_inputs_get_clear_errors(encoder, tmp_path):
    with pytest.raises(InputError, match="empty"):
        encoder.encode_queries([Query(text="   ", instruction=INSTR_T2I)])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="cannot read image"):
        encoder.encode_queries([Query(image=str(broken))])
    with pytest.raises(InputError, match="not found"):
        encoder.encode_queries([Query(image=str(tmp_path / "missing.png"))])
    with pytest.raises(InputError, match="reasoning must be"):
        encoder.encode_queries([Query(text="x")], reasoning="sometimes")
    with pytest.raises(InputError, match="neither text nor image"):
        encoder.encode_candidates([Candidate(did="9:9")])


def test_lamra_style_never_reasons_and_gets_its_token(tiny_qwen_dir):
    enc = trace_core.load_model(tiny_qwen_dir, style="lamra")
    bb = enc.backbone
    assert bb.tokenizer.convert_tokens_to_ids("<emb>") == bb.emb_token_id
    results = enc.encode_queries(_queries()[:2], reasoning="always")
    assert [r.route for r in results] == ["direct", "direct"]
    assert "You are a helpful assistant." in enc.render_query(_queries()[0]).text


def test_checkpoint_without_emb_token_gets_it_added(tmp_path):
    from tests.tiny_qwen2vl import build_tiny_qwen2vl

    path = build_tiny_qwen2vl(tmp_path / "plain", with_emb_token=False)
    enc = trace_core.load_model(path)
    assert enc.backbone.tokenizer.convert_tokens_to_ids("<|emb|>") == enc.backbone.emb_token_id
    assert enc.encode_queries([Query(text="a dog")], reasoning="never")[0].embedding.shape == (32,)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(trace_core.ModelNotFoundError, match="no model at"):
        trace_core.load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(trace_core.ModelNotFoundError, match="no config.json"):
        trace_core.load_model(tmp_path / "empty")


def test_direct_embedding_is_kept_for_reasoned_queries(encoder):
    queries = _queries()[:3]
    never = encoder.encode_queries(queries, reasoning="never")
    always = encoder.encode_queries(queries, reasoning="always")
    for n, a in zip(never, always, strict=True):
        np.testing.assert_allclose(a.direct_embedding, n.embedding, atol=1e-5)
        assert not np.allclose(a.embedding, n.embedding, atol=1e-3)


def test_emb_token_pooling_feeds_the_token(tiny_qwen_dir):
    """UME-R1-style pooling takes the hidden state of the embedding token itself."""
    enc = trace_core.load_model(tiny_qwen_dir, style="ume-r1")
    emb = enc.backbone.emb_token_id
    q = _queries()[1]
    r = enc.encode_queries([q], reasoning="never")[0]
    hidden, _ = _full_forward(enc, q, (emb,))
    np.testing.assert_allclose(r.embedding, _unit(hidden), atol=1e-5)
    c = Candidate(text="a blue car", did="1")
    hidden, _ = _full_forward(enc, c, (emb,))
    np.testing.assert_allclose(enc.encode_candidates([c])[0], _unit(hidden), atol=1e-5)


def test_emb_margin_decides_the_route_for_any_bias(encoder):
    queries = _queries()
    margins = np.array([r.emb_margin for r in encoder.encode_queries(queries, reasoning="never")])
    np.testing.assert_allclose(margins, _margins(encoder, queries), rtol=1e-4, atol=1e-4)
    for bias in np.linspace(margins.min() - 0.1, margins.max() + 0.1, 5):
        routes = [r.route for r in encoder.encode_queries(queries, routing_bias=float(-bias))]
        assert routes == ["direct" if m - bias > 0 else "reason" for m in margins]


# ------------------------------------------------------------------------------------------ decide_route
EMB, STOP = 5, 7  # token ids in a hand-made vocabulary of 8


def _logits(**by_id: float) -> torch.Tensor:
    """Logits [8]: 0 everywhere but the given ids (`t3=2.0` sets token 3)."""
    x = torch.zeros(8)
    for name, value in by_id.items():
        x[int(name[1:])] = value
    return x


def test_decide_route_bias_moves_the_decision_exactly_at_the_margin():
    from trace_core.encoder import decide_route, prefers_direct

    logits = _logits(t5=1.5, t2=4.0, t7=9.0)  # <|emb|> 1.5; best ordinary token 2 at 4.0; a stop at 9.0
    first = decide_route(logits, EMB, {STOP}, "auto", 0.0)
    assert first.margin == pytest.approx(-2.5) and first.best_other.token_id == 2
    assert first.route == "reason" and not first.prefers_direct and first.first_token == 2  # the stop is masked
    assert first.emb_rank == 3 and first.top[0].token_id == STOP  # the display keeps the unmasked ranking
    assert first.p_emb == pytest.approx(float(torch.softmax(logits, -1)[EMB]))
    for bias, route in [(2.5 + 1e-4, "direct"), (2.5, "reason"), (2.5 - 1e-4, "reason")]:  # a tie reasons
        step = decide_route(logits, EMB, {STOP}, "auto", bias)
        assert step.route == route and step.prefers_direct == prefers_direct(step.margin, bias)
        assert step.p_emb == first.p_emb and step.margin == first.margin  # read before the bias
    assert decide_route(logits, EMB, {STOP}, "auto", 3.0).first_token == EMB
    # the rule replays on arrays of stored margins (analysis.difficulty.bias_sweep)
    assert list(prefers_direct(np.array([-1.0, 0.0, 1.0]), 0.0)) == [False, False, True]


def test_decide_route_modes_override_the_model():
    from trace_core.encoder import decide_route

    sure = _logits(t5=10.0)  # the model wants to embed at once
    unsure = _logits(t5=-10.0, t3=1.0)
    assert decide_route(sure, EMB, {STOP}, "always").route == "reason"
    assert decide_route(sure, EMB, {STOP}, "always", routing_bias=1e6).route == "reason"
    assert decide_route(unsure, EMB, {STOP}, "never").route == "direct"
    assert decide_route(unsure, EMB, {STOP}, "never", routing_bias=-1e6).route == "direct"
    # a style that cannot reason is direct whatever the mode; the model's preference is still recorded
    step = decide_route(unsure, EMB, {STOP}, "always", can_reason=False)
    assert step.route == "direct" and not step.prefers_direct
    assert decide_route(sure, EMB, {STOP}, "always").first_token != EMB


def test_decide_route_ties_and_ranks():
    from trace_core.encoder import decide_route

    tie = _logits(t1=2.0, t4=2.0, t5=2.0)  # three tokens share the top logit
    step = decide_route(tie, EMB, {STOP}, "auto", top=8)
    assert step.margin == 0.0 and step.route == "reason"  # a tie is not a win for <|emb|>
    assert step.best_other.token_id == 1  # among equal logits the lowest id, as argmax and a stable sort
    assert [t.token_id for t in step.top[:3]] == [1, 4, 5] and [t.rank for t in step.top] == list(range(1, 9))
    assert step.emb_rank == 3 and step.top[2].token_id == EMB
    assert len(decide_route(tie, EMB, {STOP}, top=0).top) == 0 and len(step.top) == step.vocab_size == 8
    with pytest.raises(InputError, match="reasoning must be one of auto, always, never"):
        decide_route(tie, EMB, {STOP}, "sometimes")
    with pytest.raises(InputError, match="finite"):
        decide_route(tie, EMB, {STOP}, "auto", float("nan"))


def test_query_results_carry_the_encoders_first_step(encoder):
    assert isinstance(encoder, trace_core.Encoder)
    queries = _queries()[:3]
    for r in encoder.encode_queries(queries, reasoning="auto"):
        step = r.first_step
        assert step is not None and step.route == r.route and step.p_emb == r.p_emb and step.margin == r.emb_margin
        assert len(step.top) == EncoderConfig().top_tokens
        if r.route == "reason":
            assert r.cot_token_ids[0] == step.best_other.token_id
    events = list(encoder.stream_query(queries[0], "always", first_step=True, top_tokens=3))
    assert events[0].route == "reason" and len(events[0].top) == 3 and events[-1].first_step is events[0]
    assert not any(type(e).__name__ == "FirstStep" for e in encoder.stream_query(queries[0], "never"))


def test_repeated_ngram_tokens():
    from trace_core.encoder import repeated_ngram_tokens

    toks = [1, 2, 3, 1, 2]
    assert repeated_ngram_tokens(toks, 3) == {3}  # "1 2" was followed by 3 before
    assert repeated_ngram_tokens(toks, 2) == {3}  # "2" was followed by 3 before
    assert repeated_ngram_tokens(toks, 1) == {1, 2, 3}
    assert repeated_ngram_tokens([1, 2], 3) == set() and repeated_ngram_tokens(toks, 0) == set()


def _ngrams(ids, n):
    return [tuple(ids[k : k + n]) for k in range(len(ids) - n + 1)]


def test_repetition_guard_blocks_repeated_ngrams_and_otherwise_decodes_greedily(tiny_qwen_dir):
    enc = trace_core.load_model(tiny_qwen_dir, config=EncoderConfig(max_cot_tokens=24))
    queries = _queries()[:4]
    plain = enc.encode_queries(queries, reasoning="always")
    assert all(r.no_repeat_ngram == 0 for r in plain)
    assert any(len(set(_ngrams(r.cot_token_ids, 2))) < len(_ngrams(r.cot_token_ids, 2)) for r in plain)  # loops
    guarded = enc.encode_queries(queries, reasoning="always", no_repeat_ngram=2)
    for q, p, g in zip(queries, plain, guarded, strict=True):
        assert g.no_repeat_ngram == 2
        grams = _ngrams(g.cot_token_ids, 2)
        assert len(set(grams)) == len(grams)  # no bigram twice
        # greedy up to the first token the guard had to block; that token is the best unblocked one
        pairs = zip(p.cot_token_ids, g.cot_token_ids, strict=False)  # either may stop first
        same = next((k for k, (a, b) in enumerate(pairs) if a != b), None)
        if same is not None:
            assert p.cot_token_ids[:same] == g.cot_token_ids[:same]
            _, logits = _full_forward(enc, q, g.cot_token_ids[:same])
            logits[sorted(trace_core.encoder.repeated_ngram_tokens(list(g.cot_token_ids[:same]), 2))] = -torch.inf
            assert int(logits.argmax()) == g.cot_token_ids[same]
        hidden, _ = _full_forward(enc, q, g.cot_token_ids)  # the embedding is still the pre-token state
        np.testing.assert_allclose(g.embedding, _unit(hidden), atol=1e-5)
    assert any(p.cot_token_ids != g.cot_token_ids for p, g in zip(plain, guarded, strict=True))
    # the config's default applies when a call does not say; streaming decodes the same
    on = trace_core.load_model(tiny_qwen_dir, config=EncoderConfig(max_cot_tokens=24, no_repeat_ngram=2))
    assert on.encode_queries(queries[:1], reasoning="always")[0].cot_token_ids == guarded[0].cot_token_ids
    streamed = list(on.stream_query(queries[0], reasoning="always"))[-1]
    assert streamed.cot_token_ids == guarded[0].cot_token_ids
    assert on.encode_queries(queries[:1], reasoning="always", no_repeat_ngram=0)[0].cot_token_ids == \
        plain[0].cot_token_ids
    for bad in (-1, 2.5, 99, "x", True):
        with pytest.raises(InputError, match="no_repeat_ngram"):
            enc.encode_queries(queries[:1], no_repeat_ngram=bad)
