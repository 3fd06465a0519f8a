"""The caches the app ships (assets/cache, `python -m app.ship`): a start with them encodes nothing and fits no
map; they are taken only when they match the model and data; the shipped ones match the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import analysis.embedding_map as embedding_map
from app.services import Services, default_analysis
from app.ship import ship
from tests.mbeir_fixture import build_fixture
from tests.tiny_mini import build_tiny_mini
from trace_core.evaluate import EvalConfig, evaluate
from trace_core.lazy import default_precision
from trace_core.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED, MODEL, DATA = ROOT / "assets" / "cache", ROOT / "assets" / "trace-mini", ROOT / "assets" / "minibeir"


def _no_work(encoder, monkeypatch) -> list[int]:
    """Count candidate encodings of `encoder` (it still encodes when asked) and forbid fitting a map."""
    calls: list[int] = []
    encode = encoder.encode_candidates

    def counting(cands, **kw):
        calls.append(len(cands))
        return encode(cands, **kw)

    monkeypatch.setattr(encoder, "encode_candidates", counting)

    def no_umap(*a, **k):
        raise AssertionError("the embedding map was fitted instead of taken from the shipped cache")

    monkeypatch.setattr(embedding_map, "fit_umap", no_umap)
    return calls


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ship_then_start_encodes_nothing_and_a_changed_pool_is_rebuilt(tmp_path, monkeypatch):
    fx = build_fixture(tmp_path / "mbeir")
    model = build_tiny_mini(tmp_path / "mini")
    encoder = load_model(str(model))
    out = tmp_path / "eval"
    evaluate(encoder, fx["root"], "test", "all", out, EvalConfig(counterfactual=True, cache_dir=str(tmp_path / "c0")))
    shipped = tmp_path / "shipped"
    report = ship(str(model), fx["root"], shipped, "test", str(tmp_path / "c1"), out / "queries.parquet")

    assert {r["pair"] for r in report["indexes"].values()} == set(fx["pairs"])
    assert json.loads((shipped / "SHIPPED.json").read_text())["map"]["file"] == report["map"]["file"]
    for name, r in report["indexes"].items():  # float16 only where no benchmark query's gold rank moved
        assert (r["dtype"] == "float16") == (r["gold_ranks_changed_by_float16"] == 0)
        assert r["benchmark_queries_checked"] > 0 and (shipped / name / "manifest.json").is_file()
    before = _tree(shipped)

    # a fresh machine: empty local cache, the shipped folder beside it
    calls = _no_work(encoder, monkeypatch)
    fresh = tmp_path / "fresh"
    services = Services.load(str(model), fx["root"], "test", str(fresh), encoder=encoder,
                             analysis=out / "queries.parquet", shipped=[shipped])
    assert calls == [] and services.map is not None and len(services.map.points)
    assert not fresh.exists() or not any(fresh.iterdir())

    # one pool changes: only its index is rebuilt (in the local cache); the shipped folder is left as it was
    pool_file = fx["pool_files"][fx["pairs"][0]]
    lines = pool_file.read_text().splitlines()
    first = json.loads(lines[0])
    first["txt"] = (first.get("txt") or "") + " changed"
    pool_file.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    monkeypatch.undo()
    calls = _no_work(encoder, monkeypatch)
    Services.load(str(model), fx["root"], "test", str(fresh), encoder=encoder, embedding_map=False,
                  shipped=[shipped])
    assert calls == [len(lines)]
    assert _tree(shipped) == before


@pytest.mark.skipif(not (SHIPPED / "SHIPPED.json").is_file(), reason="no shipped caches (python -m app.ship)")
def test_the_shipped_caches_match_the_shipped_model_and_data(tmp_path, monkeypatch):
    """Fails when the model or the corpus changed without `python -m app.ship`: the app would rebuild them. The
    caches are for the precision the app serves the shipped model in (int8 on a CPU)."""
    precision = default_precision(MODEL)
    encoder = load_model(str(MODEL), precision=precision)
    calls = _no_work(encoder, monkeypatch)
    services = Services.load(str(MODEL), DATA, "test", str(tmp_path / "cache"), encoder=encoder,
                             analysis=default_analysis(MODEL, precision), shipped=[SHIPPED])
    assert calls == [], "a shipped index does not match the shipped model or pool: run python -m app.ship"
    assert services.map is not None and not services.notes
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 40 * 2**20
