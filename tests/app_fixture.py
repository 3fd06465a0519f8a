"""Services as `python app.py --model M --analysis OUT/queries.parquet` would load them, on a tiny model.

The tiny TRACE-mini is random (a test model for the mechanics); the evaluation run is real: the same
`trace_core.evaluate` with `--counterfactual` that produces the shipped analysis table and query embeddings.
"""

from __future__ import annotations

from pathlib import Path

from app.services import Services
from tests.mbeir_fixture import build_fixture
from tests.tiny_mini import build_tiny_mini
from trace_core.evaluate import EvalConfig, evaluate
from trace_core.loading import load_model


def build_services(root: Path, with_analysis: bool = True, with_map: bool = False) -> Services:
    """Data, model, evaluation run (when `with_analysis`) and Services; the UMAP map only when `with_map`."""
    fx = build_fixture(root / "mbeir")
    model = build_tiny_mini(root / "mini")
    cache = str(root / "cache")
    encoder = load_model(str(model))
    if not with_analysis:
        return Services.load(str(model), fx["root"], "test", cache, encoder=encoder, embedding_map=with_map)
    out = root / "eval"
    evaluate(encoder, fx["root"], "test", "all", out, EvalConfig(counterfactual=True, cache_dir=cache))
    return Services.load(str(model), fx["root"], "test", cache, benchmark=out / "results.json", encoder=encoder,
                         analysis=out / "queries.parquet", embedding_map=with_map)
