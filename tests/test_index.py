"""Tests for trace_core.index against brute-force numpy oracles (seeded random unit vectors, no mocks)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from trace_core.index import (
    CandidateIndex,
    CorruptIndexError,
    IndexConfig,
    IndexManifest,
    IndexMismatchError,
    merge_shards,
    pool_fingerprint,
    shard_bounds,
    write_shard,
)

logger = logging.getLogger(__name__)

DIM = 32
MODEL = "trace-test-model"


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """[n, dim] float32 rows on the unit sphere."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pool_ids(n: int) -> list[str]:
    return [f"9:{i}" for i in range(n)]


def exact_topk(queries: np.ndarray, emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force oracle: scores [Q, k] and row indices [Q, k], best first."""
    scores = queries @ emb.T  # [Q, N]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def exact_rank(query: np.ndarray, emb: np.ndarray, row: int) -> int:
    """Oracle via argsort: 1-based position of `row` in the descending score order."""
    order = np.argsort(-(emb @ query), kind="stable")
    return int(np.flatnonzero(order == row)[0]) + 1


@pytest.fixture(scope="module")
def pool() -> tuple[list[str], np.ndarray]:
    return pool_ids(5000), unit_vectors(5000, seed=1)


@pytest.fixture(scope="module")
def flat(pool: tuple[list[str], np.ndarray]) -> CandidateIndex:
    ids, emb = pool
    return CandidateIndex.build(ids, emb, model_id=MODEL, model_revision="abc123", prompt_hash="p1")


@pytest.fixture(scope="module")
def hnsw_pool() -> tuple[list[str], np.ndarray, CandidateIndex]:
    ids, emb = pool_ids(3000), unit_vectors(3000, seed=2)
    index = CandidateIndex.build(ids, emb, model_id=MODEL, config=IndexConfig(approximate_above=1000))
    return ids, emb, index


# ---------------------------------------------------------------------- search and ranks
def test_flat_search_matches_brute_force(pool, flat):
    ids, emb = pool
    queries = unit_vectors(20, seed=3)
    scores, found = flat.search(queries, 10)
    want_scores, want_rows = exact_topk(queries, emb, 10)
    assert flat.manifest.kind == "flat" and flat.faiss_index is None  # exact search is numpy alone
    assert scores.shape == (20, 10) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert found == [[ids[j] for j in row] for row in want_rows]


def test_search_single_query_and_k_larger_than_pool():
    ids, emb = pool_ids(7), unit_vectors(7, seed=4)
    index = CandidateIndex.build(ids, emb, model_id=MODEL)
    scores, found = index.search(emb[3], 50)  # [D] is treated as [1, D]; k' = min(k, N) = 7
    assert scores.shape == (1, 7) and len(found[0]) == 7
    assert found[0][0] == "9:3"
    assert sorted(found[0]) == sorted(ids)


def test_search_rejects_wrong_query_dim(flat):
    with pytest.raises(
        ValueError, match=f"Query dimension {DIM + 1} does not match the index dimension {DIM}"
    ):
        flat.search(unit_vectors(2, dim=DIM + 1), 5)


def test_rank_of_matches_argsort_including_far_down(pool, flat):
    ids, emb = pool
    query = unit_vectors(1, seed=5)[0]
    order = np.argsort(-(emb @ query), kind="stable")
    for position in (0, 1, 41, 2999, 4999):  # rank 1 .. rank 5000 (last)
        row = int(order[position])
        rank, score = flat.rank_of(query, ids[row])
        assert rank == exact_rank(query, emb, row) == position + 1
        assert score == pytest.approx(float(emb[row] @ query), abs=1e-5)


def test_ranks_of_matches_rank_of(pool, flat):
    ids, emb = pool
    queries = unit_vectors(25, seed=6)
    rng = np.random.default_rng(7)
    targets = [ids[int(j)] for j in rng.integers(0, len(ids), size=25)]
    ranks, scores = flat.ranks_of(queries, targets)
    assert ranks.shape == (25,) and scores.shape == (25,)
    for q, did, rank, score in zip(queries, targets, ranks, scores, strict=True):
        want_rank, want_score = flat.rank_of(q, did)
        assert rank == want_rank == exact_rank(q, emb, ids.index(did))
        assert score == pytest.approx(want_score, abs=1e-6)
    assert ranks.max() > 1000  # random targets land deep in the ranking, not just in the top-k


def test_positive_and_gold_ranks_are_the_best_exact_rank_of_any_positive(pool, flat):
    ids, emb = pool
    queries = unit_vectors(4, seed=21)
    positives = [{ids[10], ids[20], "9:not-in-pool"}, set(), {"9:not-in-pool"}, {ids[7]}]
    found = flat.positive_ranks(queries, positives)
    assert [len(f) for f in found] == [2, 0, 0, 1]
    for q, f in zip(queries, found, strict=True):
        assert [r for _, r, _ in f] == sorted(r for _, r, _ in f)
        for did, rank, score in f:
            assert (rank, score) == (flat.rank_of(q, did)[0], pytest.approx(flat.rank_of(q, did)[1], abs=1e-5))
    ranks, scores, dids = flat.gold_ranks(queries, positives)
    assert dids == [found[0][0][0], None, None, ids[7]]
    assert ranks[0] == min(flat.rank_of(queries[0], d)[0] for d in (ids[10], ids[20]))
    assert np.isnan(ranks[1]) and np.isnan(scores[2]) and ranks[3] == exact_rank(queries[3], emb, 7)
    # a tie in rank goes to the smaller did
    twin = CandidateIndex.build(["9:b", "9:a", "9:c"], np.eye(3, DIM, dtype=np.float32)[[0, 0, 1]], model_id=MODEL)
    assert twin.gold_ranks(np.eye(1, DIM, dtype=np.float32), [{"9:b", "9:a"}])[2] == ["9:a"]


def test_k_is_checked_with_one_message(flat):
    for bad in (0, -1, 2.5, "x", None, True):
        with pytest.raises(ValueError, match="k must be a whole number >= 1"):
            flat.search(unit_vectors(1), bad)
    assert flat.search(unit_vectors(1), 3.0)[0].shape == (1, 3)  # a slider's float that holds a whole number


def test_rank_of_unknown_did(flat):
    with pytest.raises(KeyError, match="'9:999999' is not in this index"):
        flat.rank_of(unit_vectors(1)[0], "9:999999")


def test_ranks_of_length_mismatch(flat):
    with pytest.raises(ValueError, match="one target did per query"):
        flat.ranks_of(unit_vectors(3), ["9:1"])


def test_hnsw_chosen_above_threshold_with_high_recall(hnsw_pool, record_property):
    ids, emb, index = hnsw_pool
    assert index.manifest.kind == "hnsw"
    assert isinstance(index.faiss_index, faiss.IndexHNSWFlat)
    assert index.faiss_index.hnsw.efSearch == IndexConfig().hnsw_ef_search
    queries = unit_vectors(50, seed=8)
    recall = index.recall_vs_exact(queries, k=10)
    # Reported in the junit XML (pytest --junitxml) and the log, so recall regressions are visible.
    record_property("hnsw_recall_at_10", recall)
    logger.info("HNSW recall@10 vs exact on 3000 candidates: %.3f", recall)
    assert recall > 0.9
    flat = CandidateIndex.build(ids, emb, model_id=MODEL, config=IndexConfig(approximate_above=3000))
    assert flat.manifest.kind == "flat"
    assert flat.recall_vs_exact(queries, k=10) == 1.0


def test_exact_ranks_on_hnsw_index(hnsw_pool):
    ids, emb, index = hnsw_pool
    query = unit_vectors(1, seed=9)[0]
    row = int(np.argsort(-(emb @ query))[2500])
    assert index.rank_of(query, ids[row])[0] == 2501


# ---------------------------------------------------------------------- build validation
def test_build_rejects_duplicate_ids():
    ids = ["9:1", "9:2", "9:1"]
    with pytest.raises(ValueError, match="'9:1' occurs more than once"):
        CandidateIndex.build(ids, unit_vectors(3), model_id=MODEL)


@pytest.mark.parametrize(
    "embeddings, message",
    [
        (np.zeros(DIM, dtype=np.float32), "2-D array"),
        (np.zeros((0, DIM), dtype=np.float32), "non-empty"),
    ],
)
def test_build_rejects_bad_shapes(embeddings, message):
    with pytest.raises(ValueError, match=message):
        CandidateIndex.build([], embeddings, model_id=MODEL)


def test_build_rejects_length_mismatch_and_nan():
    emb = unit_vectors(4)
    with pytest.raises(ValueError, match="Got 3 ids for 4 embedding rows"):
        CandidateIndex.build(pool_ids(3), emb, model_id=MODEL)
    emb[2, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or inf .* first at row 2"):
        CandidateIndex.build(pool_ids(4), emb, model_id=MODEL)


def test_build_casts_and_copies_embeddings():
    emb = unit_vectors(10).astype(np.float64)
    index = CandidateIndex.build(pool_ids(10), emb, model_id=MODEL)
    assert index.embeddings.dtype == np.float32 and len(index) == 10
    emb[:] = 0  # caller mutation must not desynchronise exact ranks from the faiss index
    assert index.rank_of(unit_vectors(10)[4], "9:4") == (1, pytest.approx(1.0, abs=1e-5))


def test_default_pool_hash_depends_on_ids():
    emb = unit_vectors(5)
    a = CandidateIndex.build(pool_ids(5), emb, model_id=MODEL).manifest.pool_hash
    b = CandidateIndex.build(pool_ids(5)[::-1], emb, model_id=MODEL).manifest.pool_hash
    assert len(a) == 64 and a != b


def test_pool_fingerprint_canonical():
    records = [{"did": "9:1", "txt": "a dog", "modality": "text"}, {"did": "9:2", "txt": "ünï"}]
    reordered_keys = [{"modality": "text", "txt": "a dog", "did": "9:1"}, {"txt": "ünï", "did": "9:2"}]
    assert pool_fingerprint(records) == pool_fingerprint(reordered_keys)
    assert pool_fingerprint(records) != pool_fingerprint(records[::-1])
    assert pool_fingerprint(records) != pool_fingerprint([records[0], {"did": "9:2", "txt": "uni"}])


def test_manifest_roundtrip_and_compatible(flat):
    m = flat.manifest
    assert IndexManifest.from_dict(m.to_dict()) == m
    assert m.compatible(m) == []
    other = IndexManifest.from_dict({**m.to_dict(), "kind": "hnsw"})
    assert m.compatible(other) == []  # kind is not identity
    other = IndexManifest.from_dict({**m.to_dict(), "model_revision": "zzz", "format_version": 2})
    assert m.compatible(other) == [
        "model_revision: expected 'abc123', found 'zzz'",
        "format_version: expected 1, found 2",
    ]
    with pytest.raises(ValueError, match="missing field.*pool_hash"):
        IndexManifest.from_dict({k: v for k, v in m.to_dict().items() if k != "pool_hash"})


# ---------------------------------------------------------------------- persistence
def test_save_load_roundtrip(flat, tmp_path):
    flat.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["embeddings.npy", "ids.json", "manifest.json"]
    loaded = CandidateIndex.load(tmp_path / "idx", expected=flat.manifest)
    assert loaded.manifest == flat.manifest and loaded.ids == flat.ids
    queries = unit_vectors(10, seed=11)
    s1, i1 = flat.search(queries, 20)
    s2, i2 = loaded.search(queries, 20)
    np.testing.assert_array_equal(s1, s2)
    assert i1 == i2
    np.testing.assert_array_equal(loaded.embeddings, flat.embeddings)


def test_float16_storage_halves_the_file_and_reads_back_as_float32(flat, tmp_path):
    flat.save(tmp_path / "full")
    flat.save(tmp_path / "half", dtype="float16")
    full, half = (tmp_path / d / "embeddings.npy" for d in ("full", "half"))
    assert half.stat().st_size < 0.51 * full.stat().st_size
    loaded = CandidateIndex.load(tmp_path / "half", expected=flat.manifest)
    assert loaded.embeddings.dtype == np.float32
    np.testing.assert_allclose(loaded.embeddings, flat.embeddings, atol=1e-3)
    queries = unit_vectors(10, seed=11)
    assert loaded.search(queries, 5)[1] == flat.search(queries, 5)[1]
    with pytest.raises(ValueError, match="float32 or float16"):
        flat.save(tmp_path / "x", dtype="int8")


def test_hnsw_save_load_roundtrip(hnsw_pool, tmp_path):
    _, _, index = hnsw_pool
    index.save(tmp_path / "h")
    loaded = CandidateIndex.load(tmp_path / "h")
    assert (
        loaded.manifest.kind == "hnsw" and loaded.faiss_index.hnsw.efSearch == index.faiss_index.hnsw.efSearch
    )
    assert "index.faiss" in {p.name for p in (tmp_path / "h").iterdir()}
    queries = unit_vectors(5, seed=12)
    assert loaded.search(queries, 10)[1] == index.search(queries, 10)[1]


def test_save_replaces_existing_index(tmp_path):
    first = CandidateIndex.build(pool_ids(10), unit_vectors(10, seed=1), model_id="old")
    second = CandidateIndex.build(pool_ids(20), unit_vectors(20, seed=2), model_id="new")
    first.save(tmp_path / "idx")
    second.save(tmp_path / "idx")
    assert CandidateIndex.load(tmp_path / "idx").manifest == second.manifest
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_load_with_different_manifest_raises(flat, tmp_path):
    flat.save(tmp_path / "idx")
    expected = IndexManifest.from_dict({**flat.manifest.to_dict(), "model_id": "other-model"})
    with pytest.raises(
        IndexMismatchError, match="model_id: expected 'other-model', found 'trace-test-model'"
    ):
        CandidateIndex.load(tmp_path / "idx", expected=expected)
    expected = IndexManifest.from_dict({**flat.manifest.to_dict(), "prompt_hash": "p2"})
    with pytest.raises(IndexMismatchError, match="prompt_hash") as err:
        CandidateIndex.load(tmp_path / "idx", expected=expected)
    assert "rebuild" in str(err.value)


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="No index directory"):
        CandidateIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        CandidateIndex.load(tmp_path / "empty")


def test_truncated_embeddings_detected(flat, tmp_path):
    flat.save(tmp_path / "idx")
    path = tmp_path / "idx" / "embeddings.npy"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(CorruptIndexError, match="embeddings.npy is truncated or corrupt"):
        CandidateIndex.load(tmp_path / "idx")


def test_corrupted_faiss_file_detected(tmp_path):
    CandidateIndex.build(pool_ids(50), unit_vectors(50), model_id=MODEL, config=IndexConfig(approximate_above=10)
                         ).save(tmp_path / "idx")
    path = tmp_path / "idx" / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="index.faiss is corrupt"):
        CandidateIndex.load(tmp_path / "idx")


def test_unreadable_manifest_detected(flat, tmp_path):
    flat.save(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptIndexError, match="manifest.json is unreadable"):
        CandidateIndex.load(tmp_path / "idx")


@pytest.mark.parametrize("failing", ["faiss.write_index", "numpy.save"])
def test_failed_save_keeps_previous_index(flat, tmp_path, monkeypatch, failing):
    target = tmp_path / "idx"
    flat.save(target)
    # the faiss file exists only for an approximate index
    approximate_above = 0 if failing.startswith("faiss") else IndexConfig.approximate_above
    newer = CandidateIndex.build(pool_ids(10), unit_vectors(10), model_id="newer",
                                 config=IndexConfig(approximate_above=approximate_above))

    def boom(*args, **kwargs):
        raise OSError("No space left on device")

    module, name = failing.split(".")
    monkeypatch.setattr(faiss if module == "faiss" else np, name, boom)
    with pytest.raises(OSError, match="No space left"):
        newer.save(target)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no .idx.tmp-* left behind
    loaded = CandidateIndex.load(target, expected=flat.manifest)
    queries = unit_vectors(3, seed=13)
    assert loaded.search(queries, 5)[1] == flat.search(queries, 5)[1]


def test_failed_swap_restores_previous_index(flat, tmp_path, monkeypatch):
    target = tmp_path / "idx"
    flat.save(target)
    real_replace = os.replace

    def replace(src, dst):
        name = Path(src).name
        if ".tmp-" in name and not name.endswith(".old") and Path(dst) == target:  # the new one moving in
            raise OSError("simulated crash while renaming into place")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        CandidateIndex.build(pool_ids(10), unit_vectors(10), model_id="newer").save(target)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    assert CandidateIndex.load(target).manifest == flat.manifest


# ---------------------------------------------------------------------- shards
@pytest.mark.parametrize("n, num_shards", [(10, 3), (3, 5), (1000, 7), (0, 2), (9, 1)])
def test_shard_bounds_tile_and_balance(n, num_shards):
    bounds = [shard_bounds(n, s, num_shards) for s in range(num_shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_shard_bounds_validates():
    with pytest.raises(ValueError, match="0 <= shard < num_shards"):
        shard_bounds(10, 3, 3)
    with pytest.raises(ValueError, match="0 <= shard < num_shards"):
        shard_bounds(10, -1, 3)


def _write_pool_shards(
    directory: Path,
    ids: list[str],
    emb: np.ndarray,
    num_shards: int,
    overrides: dict[int, dict[str, str]] | None = None,
) -> IndexManifest:
    """Write the pool as `num_shards` shards; `overrides[s]` changes manifest fields of shard s only."""
    manifest = IndexManifest(
        model_id=MODEL,
        model_revision="r1",
        prompt_hash="p1",
        dim=emb.shape[1],
        pool_size=len(ids),
        pool_hash="h",
    )
    for s in range(num_shards):
        start, end = shard_bounds(len(ids), s, num_shards)
        m = IndexManifest.from_dict({**manifest.to_dict(), **(overrides or {}).get(s, {})})
        write_shard(directory, s, num_shards, ids[start:end], emb[start:end], m)
    return manifest


def test_merge_shards_equals_whole_pool_build(tmp_path):
    ids, emb = pool_ids(1001), unit_vectors(1001, seed=14)
    manifest = _write_pool_shards(tmp_path, ids, emb, 3)
    assert (tmp_path / "shard-00002-of-00003.npz").is_file()
    assert (tmp_path / "shard-00002-of-00003.json").is_file()
    merged = merge_shards(tmp_path)
    whole = CandidateIndex.build(
        ids, emb, model_id=MODEL, model_revision="r1", prompt_hash="p1", pool_hash="h"
    )
    assert merged.manifest == whole.manifest
    assert manifest.compatible(merged.manifest) == []
    assert merged.ids == ids
    np.testing.assert_array_equal(merged.embeddings, whole.embeddings)
    queries = unit_vectors(5, seed=15)
    assert merged.search(queries, 10)[1] == whole.search(queries, 10)[1]


def test_merge_reports_missing_shard(tmp_path):
    ids, emb = pool_ids(30), unit_vectors(30)
    _write_pool_shards(tmp_path, ids, emb, 3)
    (tmp_path / "shard-00001-of-00003.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard\(s\) 1 \(shard-00001-of-00003.npz\)"):
        merge_shards(tmp_path)


def test_merge_rejects_mismatched_manifests(tmp_path):
    ids, emb = pool_ids(30), unit_vectors(30)
    _write_pool_shards(tmp_path, ids, emb, 3, overrides={2: {"model_revision": "r2"}})
    with pytest.raises(IndexMismatchError, match="Shard 2 .*model_revision: expected 'r1', found 'r2'"):
        merge_shards(tmp_path)


def test_merge_rejects_mixed_shard_counts(tmp_path):
    ids, emb = pool_ids(30), unit_vectors(30)
    _write_pool_shards(tmp_path, ids, emb, 3)
    _write_pool_shards(tmp_path, ids, emb, 2)
    with pytest.raises(IndexMismatchError, match=r"different shard counts \[2, 3\]"):
        merge_shards(tmp_path)


def test_merge_detects_corrupt_shard(tmp_path):
    ids, emb = pool_ids(30), unit_vectors(30)
    _write_pool_shards(tmp_path, ids, emb, 3)
    path = tmp_path / "shard-00000-of-00003.npz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptIndexError, match="shard-00000-of-00003.npz is truncated"):
        merge_shards(tmp_path)


def test_write_shard_validates_slice(tmp_path):
    manifest = IndexManifest(
        model_id=MODEL, model_revision="", prompt_hash="", dim=DIM, pool_size=10, pool_hash="h"
    )
    with pytest.raises(ValueError, match=r"must hold candidates \[4, 7\)"):
        write_shard(tmp_path, 1, 3, pool_ids(2), unit_vectors(2), manifest)
    with pytest.raises(ValueError, match="dimension 8"):
        write_shard(tmp_path, 1, 3, pool_ids(3), unit_vectors(3, dim=8), manifest)
    assert list(tmp_path.iterdir()) == []


def test_merge_with_empty_shards(tmp_path):
    # 3 candidates over 5 hosts: shards 3 and 4 are empty but must still be written and merged.
    ids, emb = pool_ids(3), unit_vectors(3, seed=16)
    _write_pool_shards(tmp_path, ids, emb, 5)
    merged = merge_shards(tmp_path)
    assert merged.ids == ids
    np.testing.assert_array_equal(merged.embeddings, emb)
