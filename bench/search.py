"""Search: faiss exact search against a numpy matrix product, and the HNSW index's recall@10 at its speed-up.

The vectors are synthetic but shaped like embeddings: unit vectors drawn around 256 cluster centres (uniform
random vectors would flatter neither method and make approximate search look worse than on real data).
"""

from __future__ import annotations

import time

import faiss
import numpy as np

from bench.common import alternate
from trace_core.index import CandidateIndex, IndexConfig


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal((m, dim), dtype=np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def numpy_topk(q: np.ndarray, x: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Top-k ids by inner product with a plain matrix product (chunked to bound memory)."""
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), k), dtype=np.int64)
    for s in range(0, len(x), chunk):
        scores = q @ x[s : s + chunk].T
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + s], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def run(sizes: list[int], hnsw_size: int, dim: int = 576, n_queries: int = 64, k: int = 10,
        repeats: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim), dtype=np.float32)
    queries = clustered(n_queries, dim, rng, centres)
    rows = []
    for n in sizes:
        x = clustered(n, dim, rng, centres)
        flat = faiss.IndexFlatIP(dim)
        flat.add(x)
        ids_np = numpy_topk(queries, x, k)
        _, ids_faiss = flat.search(queries, k)
        agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids_np, ids_faiss, strict=True)]))
        t_faiss, t_np = alternate(lambda f=flat: f.search(queries, k), lambda x=x: numpy_topk(queries, x, k),
                                  repeats)
        # what the app uses: CandidateIndex's exact search (a chunked matrix product), one query at a time too
        ours = CandidateIndex.build([str(i) for i in range(n)], x, model_id="bench",
                                    config=IndexConfig(approximate_above=n))
        t_ours, t_ours_one = alternate(lambda o=ours: o.search(queries, k),
                                       lambda o=ours: [o.search(q, k) for q in queries[:8]], repeats)
        rows.append({"pool": n, "faiss_flat_ms_per_query": 1000 * t_faiss / n_queries,
                     "numpy_ms_per_query": 1000 * t_np / n_queries, "faiss_speedup": t_np / t_faiss,
                     "index_ms_per_query": 1000 * t_ours / n_queries,
                     "index_ms_single_query": 1000 * t_ours_one / 8, "top10_agreement": agree})
        del flat, x, ours
    # The approximate index exactly as the app builds it above IndexConfig.approximate_above.
    x = clustered(hnsw_size, dim, rng, centres)
    ids = [str(i) for i in range(hnsw_size)]
    t0 = time.perf_counter()
    hnsw = CandidateIndex.build(ids, x, model_id="bench", config=IndexConfig(approximate_above=0))
    build_s = time.perf_counter() - t0
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    t_hnsw, t_flat = alternate(lambda: hnsw.faiss_index.search(queries, k), lambda: flat.search(queries, k), repeats)
    recall = hnsw.recall_vs_exact(queries, k)
    approx = {"pool": hnsw_size, "kind": hnsw.manifest.kind, "build_s": build_s, "recall@10_vs_exact": recall,
              "hnsw_ms_per_query": 1000 * t_hnsw / n_queries, "flat_ms_per_query": 1000 * t_flat / n_queries,
              "speedup": t_flat / t_hnsw}
    return {"dim": dim, "queries": n_queries, "k": k, "exact": rows, "approximate": approx}
