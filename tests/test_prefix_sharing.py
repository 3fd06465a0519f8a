"""Shared prompt starts (`EncoderConfig.share_prefixes`, `MiniBackbone._prefill_shared`): queries of one instruction
reuse the KV cache of their prompt's start (template + instruction), and the prefill runs only the rest. What
comes out is what a whole prefill gives, to float rounding: routes, chains of thought and embeddings, in batches
that mix shared starts of different lengths with prompts that share none (an image query, an empty instruction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_mini import build_tiny_mini
from trace_core.backbones.base import RenderedPrompt
from trace_core.backbones.mini import MiniBackbone
from trace_core.encoder import EncoderConfig, TraceEncoder
from trace_core.prompts import TRACE_STYLE, query_prefix, render_query
from trace_core.records import Query

LONG = "Find the image that this description refers to, and name what it shows."
SHORT = "Retrieve a matching picture."


def _queries() -> list[Query]:
    return [
        Query(qid="a", text="a red fox in the snow", instruction=LONG),
        Query(qid="b", text="two zebras standing in the long grass near a river at dusk", instruction=LONG),
        Query(qid="c", text="emoji of a cat", instruction=SHORT),
        Query(qid="d", text="a dog", image=Image.new("RGB", (40, 40), (200, 30, 30)), instruction=LONG),
        Query(qid="e", text="which animal has black and white stripes", instruction=""),
        Query(qid="f", text="a blue car parked by the sea", instruction=SHORT),
    ]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return build_tiny_mini(tmp_path_factory.mktemp("prefix") / "mini", seed=5)


def test_the_shared_start_is_the_template_and_instruction_up_to_the_query():
    text, image = _queries()[0], _queries()[3]
    start = query_prefix(TRACE_STYLE, text)
    assert start == f"<|im_start|>user\n{LONG}\n"
    assert render_query(TRACE_STYLE, text, "<|image|>").startswith(start)
    assert query_prefix(TRACE_STYLE, image) == "<|im_start|>user\n"  # its image comes before the instruction
    assert render_query(TRACE_STYLE, image, "<|image|>").startswith(query_prefix(TRACE_STYLE, image))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_sharing_starts_computes_what_a_whole_prefill_computes(mini, precision):
    backbone = MiniBackbone.from_pretrained(mini, precision=precision)
    config = EncoderConfig(max_cot_tokens=12)
    plain = TraceEncoder(backbone, config)
    shared = TraceEncoder(backbone, EncoderConfig(max_cot_tokens=12, share_prefixes=True))
    queries = _queries()
    prompts = [shared.render_query(q) for q in queries]
    starts = [backbone._shared_start(p, backbone.model.sequence(p, None)[1]) for p in prompts]
    # two instructions share their starts; the image query's start is too short, the empty instruction's too
    assert [len(s) > 0 for s in starts] == [True, True, True, False, False, True]
    assert len({s for s in starts if s}) == 2
    want = backbone.prefill([plain.render_query(q) for q in queries])
    got = backbone.prefill(prompts)
    # measured: fp32 2e-7, int8 0 here (its products round to bfloat16, which can amplify a rounding difference:
    # on TRACE-mini about 1e-4 of an embedding); the rest's positions off by the start's length: 3e-3 both
    tolerance = 1e-5 if precision == "fp32" else 1e-3
    assert float((got.hidden - want.hidden).abs().max()) <= tolerance * float(want.hidden.abs().max())
    assert float((got.logits - want.logits).abs().max()) <= tolerance * float(want.logits.abs().max())
    a = plain.encode_queries(queries, reasoning="always")
    b = shared.encode_queries(queries, reasoning="always")
    for x, y in zip(a, b, strict=True):
        assert float(np.dot(x.direct_embedding, y.direct_embedding)) > (0.99999 if precision == "fp32" else 0.999)
        if precision == "fp32":  # the same chain of thought, token for token, decoded on the shared cache
            assert x.cot_token_ids == y.cot_token_ids
            assert float(np.dot(x.embedding, y.embedding)) > 0.99999
    assert len(backbone._prefixes) == 2  # one cache entry per shared start


def test_a_start_is_computed_once_and_the_cache_keeps_the_most_recent(mini, monkeypatch):
    backbone = MiniBackbone.from_pretrained(mini, precision="fp32", fused=False)
    shared = TraceEncoder(backbone, EncoderConfig(share_prefixes=True))
    queries = _queries()
    shared.encode_queries(queries[:2], reasoning="never")
    (entry,) = backbone._prefixes.values()
    calls = []
    forward = backbone.model.lm.model.forward
    monkeypatch.setattr(backbone.model.lm.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    shared.encode_queries(queries[:2], reasoning="never")
    assert len(calls) == 1 and next(iter(backbone._prefixes.values())) is entry  # the cached start, reused
    monkeypatch.setattr(backbone, "PREFIX_CACHE_SIZE", 2)
    others = [Query(qid=f"o{i}", text="a red fox", instruction=f"{LONG} Variant number {i}.") for i in range(3)]
    shared.encode_queries(others, reasoning="never")
    kept = list(backbone._prefixes)
    assert len(kept) == 2  # the oldest starts left the cache
    assert all(backbone.tokenizer.decode(list(k)).endswith(("Variant number 1.\n", "Variant number 2.\n")) for k in kept)


def test_a_start_that_the_tokenizer_merges_with_what_follows_is_not_shared(mini):
    backbone = MiniBackbone.from_pretrained(mini, precision="fp32", fused=False)
    text = "<|im_start|>user\nFind the image that this description refers to, and name what it shows\n"
    ids = backbone.model.sequence(RenderedPrompt(text, []), None)[1]

    def merged(cut: int) -> bool:  # the whole text does not tokenise as text[:cut] and the rest
        start = backbone.tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
        return len(start) >= backbone.PREFIX_MIN_TOKENS and ids[: len(start)] != start

    cut = next(c for c in range(len(text) - 1, 0, -1) if merged(c))
    prompt = RenderedPrompt(text, [], prefix=text[:cut])
    assert backbone._shared_start(prompt, ids) == ()
    got = backbone.prefill([prompt])
    want = backbone.prefill([RenderedPrompt(text, [])])
    assert torch.equal(got.hidden, want.hidden)  # the whole prefill, as without a prefix
    assert not backbone._prefixes
