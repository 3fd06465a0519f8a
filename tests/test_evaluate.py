"""The evaluation CLI end to end on the M-BEIR-format fixture and the tiny Qwen2-VL.

Recall is checked against an independent computation: brute-force numpy ranking of the encoder's own query
and candidate embeddings, scored against the fixture's positives by hand-written hit counting.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import trace_core
from tests.mbeir_fixture import build_fixture
from trace_core.embed_pool import to_candidate, to_query
from trace_core.evaluate import main
from trace_core.instructions import load_default_instructions
from trace_core.mbeir import candidate_modality_of, discover_pairs, load_pair


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return build_fixture(tmp_path_factory.mktemp("mbeir"))


@pytest.fixture(scope="module")
def evaluated(fixture, tiny_qwen_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cache = tmp_path_factory.mktemp("cache")
    argv = ["--mbeir-dir", str(fixture["root"]), "--split", "test", "--pairs", "all", "--model",
            str(tiny_qwen_dir), "--out", str(out), "--cache-dir", str(cache), "--counterfactual"]
    assert main(argv) == 0
    return out, cache, argv


def _oracle_hits(fixture, tiny_qwen_dir, pair_name: str) -> dict[int, list[bool]]:
    """Hit@k per query from brute-force ranking (numpy) of fresh embeddings."""
    root = fixture["root"]
    enc = trace_core.load_model(tiny_qwen_dir)
    (pair,) = discover_pairs(root, "test", pair_name)
    queries, pool, positives = load_pair(pair)
    by_id = {c.did: c for c in pool}
    instr = load_default_instructions()
    qs = [to_query(q, root, instr.for_query(q, candidate_modality_of(q, by_id, positives[q.qid])))
          for q in queries]
    qe = np.stack([r.embedding for r in enc.encode_queries(qs)])
    ce = enc.encode_candidates([to_candidate(c, root) for c in pool])
    order = np.argsort(-(qe @ ce.T), axis=1, kind="stable")
    hits = {}
    for k in (1, 5, 10):
        hits[k] = [any(pool[j].did in positives[q.qid] for j in order[i, :k]) for i, q in enumerate(queries)]
    return hits


def test_results_json_matches_brute_force_recall(fixture, tiny_qwen_dir, evaluated):
    out, _, _ = evaluated
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["pairs"]) == sorted(fixture["pairs"])
    for name in fixture["pairs"]:
        hits = _oracle_hits(fixture, tiny_qwen_dir, name)
        m = results["pairs"][name]
        for k in (1, 5, 10):
            assert m[f"recall@{k}"] == pytest.approx(sum(hits[k]) / len(hits[k]))
        assert m["n_queries"] == fixture["n_queries"][name]
        assert 0 <= m["reason_rate"] <= 1 and m["queries_per_s"] > 0
    # the pool has 12 candidates, so every query hits at 10 iff a positive is in the top 10
    avg = results["average"]
    assert avg["recall@5"] == pytest.approx(np.mean([results["pairs"][p]["recall@5"] for p in fixture["pairs"]]))
    assert avg["n_queries"] == sum(fixture["n_queries"].values())


def test_run_files_are_uniir_format_and_agree_with_results(fixture, evaluated):
    out, _, _ = evaluated
    results = json.loads((out / "results.json").read_text())
    for name in fixture["pairs"]:
        lines = (out / "runs" / f"mbeir_{name}_test_run.txt").read_text().splitlines()
        ranked: dict[str, list[str]] = {}
        for line in lines:
            qid, q0, did, rank, score, run_id, task_id = line.split()
            assert q0 == "Q0" and run_id == "trace" and int(task_id) == int(name.rsplit("task", 1)[1])
            float(score)
            ranked.setdefault(qid, []).append(did)
            assert int(rank) == len(ranked[qid])
        positives = fixture["positives"][name]
        assert set(ranked) == set(positives)
        for k in (1, 5, 10):
            hits = [any(d in positives[q] for d in ranked[q][:k]) for q in ranked]
            assert results["pairs"][name][f"recall@{k}"] == pytest.approx(np.mean(hits))


def test_query_table_has_gold_ranks_beyond_the_top_k(fixture, evaluated):
    out, _, _ = evaluated
    table = pd.read_parquet(out / "queries.parquet")
    assert len(table) == sum(fixture["n_queries"].values())
    for col in ("route", "cot", "cot_tokens", "latency_s", "gold_rank", "gold_score", "gold_rank_direct",
                "gold_rank_always", "p_emb"):
        assert col in table.columns
    # gold rank is exact over the whole pool: it agrees with hit@k and reaches past 10 in a 12-item pool
    assert ((table["gold_rank"] <= 5) == table["hit@5"]).all()
    assert table["gold_rank"].between(1, 12).all()
    direct = table[table["route"] == "direct"]
    assert (direct["gold_rank"] == direct["gold_rank_direct"]).all()
    emb = np.load(out / "embeddings" / "cirr_task7.npz")
    assert emb["final"].shape == (fixture["n_queries"]["cirr_task7"], 32)


def test_second_run_uses_the_cache_and_a_corrupt_cache_is_rebuilt(evaluated, caplog):
    out, cache, argv = evaluated
    before = json.loads((out / "results.json").read_text())
    caplog.set_level("INFO")
    assert main(argv) == 0
    assert "loaded cached index" in caplog.text and "embedding" not in caplog.text.split("loaded")[0]
    after = json.loads((out / "results.json").read_text())
    assert after["pairs"].keys() == before["pairs"].keys()
    for name, m in before["pairs"].items():
        assert after["pairs"][name]["recall@5"] == m["recall@5"]
    victim = next(cache.glob("*/embeddings.npy"))
    victim.write_bytes(victim.read_bytes()[:100])
    caplog.clear()
    assert main(argv) == 0
    assert "rebuilding" in caplog.text


def test_cli_user_errors_exit_2(fixture, tiny_qwen_dir, tmp_path, capsys):
    base = ["--split", "test", "--model", str(tiny_qwen_dir), "--out", str(tmp_path / "o")]
    assert main(["--mbeir-dir", str(tmp_path / "missing"), *base]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["--mbeir-dir", str(fixture["root"]), "--pairs", "nope_task0", *base]) == 2
    assert "nope_task0" in capsys.readouterr().err
    argv = ["--mbeir-dir", str(fixture["root"]), "--split", "test", "--model", str(tmp_path / "none"),
            "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "no model at" in capsys.readouterr().err


def test_large_pools_get_an_approximate_index_with_its_recall_logged(fixture, tiny_qwen_dir, tmp_path, caplog):
    caplog.set_level("INFO")
    argv = ["--mbeir-dir", str(fixture["root"]), "--pairs", "webqa_task1", "--model", str(tiny_qwen_dir),
            "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--approximate-above", "5"]
    assert main(argv) == 0
    assert "approximate index recall@10 vs exact search" in caplog.text
    manifest = json.loads(next((tmp_path / "c").glob("*/manifest.json")).read_text())
    assert manifest["manifest"]["kind"] == "hnsw"
    # gold ranks stay exact even when the search is approximate
    table = pd.read_parquet(tmp_path / "o" / "queries.parquet")
    assert table["gold_rank"].between(1, 12).all()


def test_counterfactual_pass_is_reported_as_an_always_reason_run(fixture, evaluated):
    out, _, _ = evaluated
    results = json.loads((out / "results.json").read_text())
    table = pd.read_parquet(out / "queries.parquet")
    always = results["counterfactual_always"]
    for name, m in always["pairs"].items():
        part = table[table["pair"] == name]
        assert m["recall@5"] == pytest.approx((part["gold_rank_always"] <= 5).mean())
        assert m["reason_rate"] == 1.0 and m["mean_cot_tokens"] == pytest.approx(part["cot_tokens_always"].mean())
    assert "always" not in results["pairs"]["cirr_task7"]
    assert always["average"]["n_queries"] == results["average"]["n_queries"]


def test_cli_repetition_guard_is_applied_and_recorded(fixture, tiny_qwen_dir, tmp_path, capsys):
    base = ["--mbeir-dir", str(fixture["root"]), "--split", "test", "--pairs", "cirr_task7", "--model",
            str(tiny_qwen_dir), "--cache-dir", str(tmp_path / "c"), "--reasoning", "always", "--max-queries", "3"]
    assert main([*base, "--out", str(tmp_path / "g"), "--no-repeat-ngram", "2"]) == 0
    results = json.loads((tmp_path / "g" / "results.json").read_text())
    assert results["config"]["no_repeat_ngram"] == 2
    table = pd.read_parquet(tmp_path / "g" / "queries.parquet")
    # the CoTs are the guarded ones: what the encoder writes with the same guard, not plain greedy decoding
    enc = trace_core.load_model(tiny_qwen_dir)
    root = fixture["root"]
    (pair,) = discover_pairs(root, "test", "cirr_task7")
    queries, pool, positives = load_pair(pair)
    by_id = {c.did: c for c in pool}
    instr = load_default_instructions()
    inputs = [to_query(q, root, instr.for_query(q, candidate_modality_of(q, by_id, positives[q.qid])))
              for q in queries[:3]]
    guarded = [r.cot for r in enc.encode_queries(inputs, reasoning="always", no_repeat_ngram=2)]
    plain = [r.cot for r in enc.encode_queries(inputs, reasoning="always")]
    assert table["cot"].tolist() == guarded and guarded != plain
    assert main([*base, "--out", str(tmp_path / "bad"), "--no-repeat-ngram", "99"]) == 2
    assert "no_repeat_ngram" in capsys.readouterr().err
