"""Sharded pool embedding (the multi-host path) and the import boundary of trace_core."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import trace_core
from tests.mbeir_fixture import build_fixture
from trace_core.embed_pool import main, to_candidate
from trace_core.index import CandidateIndex
from trace_core.mbeir import read_pool


def test_sharded_embedding_merges_to_the_single_process_result(tiny_qwen_dir, tmp_path):
    fx = build_fixture(tmp_path / "mbeir")
    root = fx["root"]
    out = tmp_path / "shards"
    common = ["--mbeir-dir", str(root), "--pool", "cirr_task7", "--model", str(tiny_qwen_dir), "--out", str(out)]
    for shard in range(3):
        assert main(["embed", *common, "--shard", str(shard), "--num-shards", "3"]) == 0
    assert main(["merge", "--out", str(out)]) == 0
    merged = CandidateIndex.load(out / "index")
    pool = read_pool(root / "cand_pool" / "local" / "mbeir_cirr_task7_cand_pool.jsonl")
    assert merged.ids == [c.did for c in pool]
    whole = trace_core.load_model(tiny_qwen_dir).encode_candidates([to_candidate(c, root) for c in pool])
    np.testing.assert_allclose(merged.embeddings, whole, atol=1e-4)


def test_merge_with_a_missing_shard_is_a_clear_error(tiny_qwen_dir, tmp_path, capsys):
    fx = build_fixture(tmp_path / "mbeir")
    out = tmp_path / "shards"
    argv = ["embed", "--mbeir-dir", str(fx["root"]), "--pool", "cirr_task7", "--model", str(tiny_qwen_dir),
            "--out", str(out), "--shard", "0", "--num-shards", "2"]
    assert main(argv) == 0
    assert main(["merge", "--out", str(out)]) == 2
    assert "shard-00001-of-00002" in capsys.readouterr().err


def test_importing_trace_core_does_not_load_gradio_or_plotly():
    code = "import sys, trace_core, trace_core.evaluate; print('gradio' in sys.modules, 'plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_pool_cache_does_not_depend_on_how_the_model_path_is_spelled(tiny_qwen_dir, tmp_path, monkeypatch):
    from trace_core.embed_pool import expected_manifest

    fx = build_fixture(tmp_path / "mbeir")
    pool = read_pool(fx["root"] / "cand_pool" / "local" / "mbeir_cirr_task7_cand_pool.jsonl")
    monkeypatch.chdir(tiny_qwen_dir.parent)
    relative = trace_core.load_model(tiny_qwen_dir.name)
    absolute = trace_core.load_model(tiny_qwen_dir.resolve())
    assert expected_manifest(relative, pool) == expected_manifest(absolute, pool)


def test_two_pairs_sharing_one_pool_embed_it_once(tiny_qwen_dir, tmp_path, monkeypatch):
    """A pool with the same records under another pair's name reuses that pair's cached index."""
    from trace_core.embed_pool import pool_index

    fx = build_fixture(tmp_path / "mbeir")
    pool = read_pool(fx["root"] / "cand_pool" / "local" / "mbeir_cirr_task7_cand_pool.jsonl")
    encoder = trace_core.load_model(tiny_qwen_dir)
    cache = tmp_path / "cache"
    first = pool_index(encoder, pool, fx["root"], cache, "pool_a", progress=False)
    calls = []
    monkeypatch.setattr(encoder, "encode_candidates", lambda *a, **k: calls.append(1) or None)
    twin = pool_index(encoder, pool, fx["root"], cache, "pool_b", progress=False)
    assert not calls and twin.ids == first.ids
    np.testing.assert_array_equal(twin.embeddings, first.embeddings)
    assert len(list(cache.glob("pool_b-*"))) == 1  # its own copy
    # different records: no reuse, the pool is embedded
    monkeypatch.undo()
    other = pool_index(encoder, pool[:-1], fx["root"], cache, "pool_c", progress=False)
    assert len(other) == len(pool) - 1
