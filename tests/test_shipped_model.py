"""The shipped TRACE-mini (assets/trace-mini) loads offline from packages + committed weights and works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import trace_core
from trace_core import Candidate, Query

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "trace-mini"
DATA = ROOT / "assets" / "minibeir"

pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="TRACE-mini not built yet")


@pytest.fixture(scope="module")
def mini():
    return trace_core.load_model(MODEL)


def test_checkpoint_is_small_and_documented():
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size < 40 * 2**20
    card = (MODEL / "MODEL_CARD.md").read_text()
    for word in ("SmolLM2", "EfficientNet", "Apache-2.0", "licence", "limit"):
        assert word.lower() in card.lower()
    results = json.loads((MODEL / "results.json").read_text())
    assert {"TRACE-mini auto", "never reason", "always reason"} <= set(results["runs"])


def test_routes_and_retrieves_an_emoji_by_its_name(mini):
    instruction = "Find me an emoji image that matches the given caption."
    pool = [Candidate(image=str(p), did=p.stem) for p in sorted((DATA / "mbeir_images" / "emoji").glob("*.png"))[:40]]
    emb = mini.encode_candidates(pool)
    assert emb.shape == (40, 576) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    r = mini.encode_queries([Query(text="an emoji of a red apple", instruction=instruction)])[0]
    assert r.route in ("direct", "reason") and 0.0 <= r.p_emb <= 1.0
    assert r.embedding.shape == (576,)
