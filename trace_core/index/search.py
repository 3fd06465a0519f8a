"""`CandidateIndex`: top-k search and exact ranks over an encoded candidate pool.

It holds the M-BEIR ``did`` of every candidate (``ids``, pool order), their L2-normalised vectors
(``embeddings`` [N, D] float32) and a manifest naming what produced them. Exact search is a chunked matrix
product in numpy (faster than faiss-cpu's IndexFlatIP here: bench/search.py); above
``IndexConfig.approximate_above`` candidates a faiss ``IndexHNSWFlat`` answers top-k queries instead. Ranks
(``ranks_of``, ``positive_ranks``, ``gold_ranks``) are always exact, from the stored vectors, so they hold for
HNSW indexes and for targets far below any top-k cut-off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..records import check_k
from .storage import (
    CorruptIndexError,
    IndexManifest,
    ids_fingerprint,
    load_index,
    rebuild_hint,
    save_index,
    validate_embeddings,
    validate_ids,
)

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

# Upper bound on the number of float32 scores materialised at once by the exact numpy paths
# (2**25 floats = 128 MiB), so ranking thousands of queries against a million candidates stays bounded.
_SCORE_BUDGET = 1 << 25
_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class IndexConfig:
    """When and how to build the approximate (faiss HNSW) search structure."""

    approximate_above: int = 500_000  # pools larger than this get an HNSW index, smaller ones exact search
    hnsw_m: int = 32  # HNSW graph degree (memory ~ N * M * 8 bytes on top of the vectors)
    hnsw_ef_construction: int = 200  # beam width while building the graph (build time vs graph quality)
    hnsw_ef_search: int = 128  # beam width at query time (latency vs recall); persisted in index.faiss

    def __post_init__(self) -> None:
        if self.approximate_above < 0:
            raise ValueError(f"IndexConfig.approximate_above must be >= 0, got {self.approximate_above}.")
        if self.hnsw_m < 2:
            raise ValueError(f"IndexConfig.hnsw_m must be >= 2, got {self.hnsw_m}.")
        if self.hnsw_ef_construction < 1 or self.hnsw_ef_search < 1:
            raise ValueError("IndexConfig.hnsw_ef_construction and hnsw_ef_search must be >= 1.")


def _as_queries(queries: np.ndarray, dim: int, model_id: str) -> np.ndarray:
    """Validate queries and return them as C-contiguous float32 ``[Q, D]`` ([D] becomes [1, D])."""
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2:
        raise ValueError(f"Queries must have shape [Q, D] or [D], got {np.asarray(queries).shape}.")
    if q.shape[1] != dim:
        raise ValueError(
            f"Query dimension {q.shape[1]} does not match the index dimension {dim} (built with "
            f"{model_id!r}); encode queries with the same model that encoded the candidate pool."
        )
    q = np.ascontiguousarray(q, dtype=np.float32)
    if not np.isfinite(q).all():
        raise ValueError("Queries contain NaN or inf values; check the query encoder output.")
    return q


class CandidateIndex:
    """Top-k search plus exact ranking over an encoded candidate pool (see module docstring)."""

    def __init__(
        self, ids: Sequence[str], embeddings: np.ndarray, index: faiss.Index | None, manifest: IndexManifest
    ) -> None:
        """Assemble from parts (use ``build``/``load``); checks the parts agree with each other.

        ``index`` is the faiss HNSW structure of an approximate index, None for an exact ("flat") one.
        """
        n, d = embeddings.shape
        if (index is None) != (manifest.kind == "flat"):
            need = "needs a" if index is None else "takes no"
            raise ValueError(f"A {manifest.kind} index {need} faiss structure.")
        n_faiss, d_faiss = (n, d) if index is None else (index.ntotal, index.d)
        if len(ids) != n or manifest.pool_size != n or n_faiss != n:
            raise ValueError(
                f"Index parts disagree on the pool size: {len(ids)} ids, {n} embedding rows, "
                f"{n_faiss} faiss vectors, manifest pool_size {manifest.pool_size}."
            )
        if manifest.dim != d or d_faiss != d:
            raise ValueError(
                f"Index parts disagree on the dimension: embeddings {d}, faiss {d_faiss}, manifest {manifest.dim}."
            )
        self.ids: list[str] = list(ids)
        self.manifest: IndexManifest = manifest
        self.embeddings: np.ndarray = embeddings  # [N, D] float32, read-only; source of exact ranks
        self.embeddings.flags.writeable = False
        self.faiss_index: faiss.Index | None = index  # HNSW only
        self._position: dict[str, int] = {did: i for i, did in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"CandidateIndex(kind={m.kind!r}, pool_size={m.pool_size}, dim={m.dim}, model_id={m.model_id!r})"
        )

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        embeddings: np.ndarray,
        *,
        model_id: str,
        model_revision: str = "",
        prompt_hash: str = "",
        pool_hash: str | None = None,
        config: IndexConfig = IndexConfig(),  # noqa: B008 -- frozen dataclass, safe as a default
    ) -> CandidateIndex:
        """Build from ``ids`` (N dids) and ``embeddings`` [N, D] (cast to float32).

        ``pool_hash`` should be ``pool_fingerprint(records)``; when omitted the sha256 of the id list is used.
        """
        emb = validate_embeddings(embeddings)
        n, d = emb.shape
        ids = validate_ids(ids, n)
        norms = np.linalg.norm(emb, axis=1)  # [N]
        worst = float(np.max(np.abs(norms - 1.0)))
        if worst > _NORM_TOLERANCE:
            # Inner product equals cosine only for unit vectors; not fatal, but scores will not be cosines.
            logger.warning("Candidate embeddings are not L2-normalised (max |norm - 1| = %.3g).", worst)

        started = time.perf_counter()
        index = None
        kind = "flat"  # exact search needs nothing beyond the vectors
        if n > config.approximate_above:
            import faiss

            kind = "hnsw"
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.hnsw_ef_construction
            index.hnsw.efSearch = config.hnsw_ef_search
            index.add(emb)
        manifest = IndexManifest(
            model_id=model_id,
            model_revision=model_revision,
            prompt_hash=prompt_hash,
            dim=d,
            pool_size=n,
            pool_hash=ids_fingerprint(ids) if pool_hash is None else pool_hash,
            kind=kind,
        )
        logger.info(
            "Built %s index over %d candidates (dim %d) in %.2fs.", kind, n, d, time.perf_counter() - started
        )
        return cls(ids, emb, index, manifest)

    # ------------------------------------------------------------------ querying
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k candidates per query.

        Returns scores ``[Q, k']`` float32 (inner products, best first) and the matching dids, with
        ``k' = min(k, N)``. An approximate index can, rarely, find fewer than k' neighbours; those slots
        hold score ``-inf`` and id ``""``.
        """
        q = _as_queries(queries, self.manifest.dim, self.manifest.model_id)  # [Q, D]
        scores, labels = self._topk(q, min(check_k(k), len(self)))
        ids = [[self.ids[j] if j >= 0 else "" for j in row] for row in labels.tolist()]
        return scores, ids

    def _topk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k scores [Q, k] float32 and rows [Q, k] int64 (-1: not found), from whichever structure."""
        if self.faiss_index is None:
            return self._exact_topk(q, k)
        scores, labels = self.faiss_index.search(q, k)  # [Q, k], [Q, k]
        scores = np.asarray(scores, dtype=np.float32)
        missing = labels < 0
        if missing.any():
            logger.warning("Approximate search returned fewer than %d neighbours for some queries.", k)
            scores[missing] = -np.inf
        return scores, labels

    def _exact_topk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product, best first ([Q, k] scores and row numbers); ties by row order."""
        out_s = np.empty((q.shape[0], k), dtype=np.float32)
        out_i = np.empty((q.shape[0], k), dtype=np.int64)
        for sl, block in self._score_chunks(q):  # block: [q_chunk, N]
            part = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < block.shape[1] else \
                np.tile(np.arange(block.shape[1]), (block.shape[0], 1))
            part_s = np.take_along_axis(block, part, axis=1)
            order = np.lexsort((part, -part_s), axis=1)  # score descending, then row ascending
            out_i[sl] = np.take_along_axis(part, order, axis=1)
            out_s[sl] = np.take_along_axis(part_s, order, axis=1)
        return out_s, out_i

    def _score_chunks(self, q: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        # Exact scores against all stored candidates, a bounded block of queries at a time: [q_chunk, N].
        step = max(1, _SCORE_BUDGET // len(self))
        for start in range(0, q.shape[0], step):
            sl = slice(start, min(start + step, q.shape[0]))
            yield sl, q[sl] @ self.embeddings.T

    def ranks_of(self, queries: np.ndarray, dids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Exact rank and score of ``dids[i]`` for ``queries[i]``, for every i.

        Returns ranks ``[Q]`` int64 (1-based; 1 + number of candidates with a strictly higher score, so ties
        share the better rank) and scores ``[Q]`` float32. Independent of the faiss index, so it is exact
        for HNSW indexes and for targets far below any top-k cut-off.
        """
        q = _as_queries(queries, self.manifest.dim, self.manifest.model_id)  # [Q, D]
        dids = list(dids)
        if len(dids) != q.shape[0]:
            raise ValueError(f"Got {len(dids)} dids for {q.shape[0]} queries; pass one target did per query.")
        targets = np.empty(len(dids), dtype=np.int64)  # [Q] row of each target in the pool
        for i, did in enumerate(dids):
            pos = self._position.get(did)
            if pos is None:
                raise KeyError(
                    f"Candidate {did!r} is not in this index of {len(self)} candidates; check that the "
                    f"qrels and the candidate pool come from the same M-BEIR task."
                )
            targets[i] = pos
        ranks = np.empty(q.shape[0], dtype=np.int64)
        scores = np.empty(q.shape[0], dtype=np.float32)
        for sl, block in self._score_chunks(q):  # block: [q_chunk, N]
            # Take the target score from the same matmul it is compared against, so the target never
            # outranks itself through float rounding differences.
            target_scores = block[np.arange(block.shape[0]), targets[sl]]  # [q_chunk]
            ranks[sl] = 1 + np.count_nonzero(block > target_scores[:, None], axis=1)
            scores[sl] = target_scores
        return ranks, scores

    def rank_of(self, query: np.ndarray, did: str) -> tuple[int, float]:
        """Exact 1-based rank and score of candidate ``did`` for one query ``[D]``."""
        q = np.asarray(query)
        if q.ndim != 1 and not (q.ndim == 2 and q.shape[0] == 1):
            raise ValueError(f"rank_of takes a single query of shape [D], got {q.shape}; use ranks_of.")
        ranks, scores = self.ranks_of(q.reshape(1, -1), [did])
        return int(ranks[0]), float(scores[0])

    def positive_ranks(
        self, queries: np.ndarray, positives: Sequence[Collection[str]]
    ) -> list[list[tuple[str, int, float]]]:
        """Per query, the exact (did, rank, score) of each of its positives in the pool, best first.

        ``queries`` [Q, D]; ``positives[i]`` are query i's gold dids (those not in the pool are left out).
        Ties in rank go to the smaller did. The first entry, when there is one, is the query's *gold rank*
        (see ``gold_ranks``).
        """
        q = _as_queries(queries, self.manifest.dim, self.manifest.model_id)  # [Q, D]
        if len(positives) != q.shape[0]:
            raise ValueError(f"Got {len(positives)} positive sets for {q.shape[0]} queries.")
        rows = [(i, did) for i, pos in enumerate(positives) for did in sorted(pos) if did in self._position]
        out: list[list[tuple[str, int, float]]] = [[] for _ in positives]
        if rows:
            ranks, scores = self.ranks_of(q[[i for i, _ in rows]], [did for _, did in rows])  # [P], [P]
            for (i, did), rank, score in zip(rows, ranks.tolist(), scores.tolist(), strict=True):
                out[i].append((did, int(rank), float(score)))
        for found in out:
            found.sort(key=lambda x: (x[1], x[0]))
        return out

    def gold_ranks(
        self, queries: np.ndarray, positives: Sequence[Collection[str]]
    ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """The gold rank of each query: the best exact rank of any of its positives, over the whole pool.

        Returns ranks [Q] and scores [Q] as float64 (NaN where no positive is in the pool) and the did of
        that best positive (None there). The one definition of the gold rank: evaluation tables, the app and
        the analyses all read it from here.
        """
        found = self.positive_ranks(queries, positives)
        ranks = np.array([f[0][1] if f else np.nan for f in found], dtype=np.float64)
        scores = np.array([f[0][2] if f else np.nan for f in found], dtype=np.float64)
        return ranks, scores, [f[0][0] if f else None for f in found]

    def recall_vs_exact(self, queries: np.ndarray, k: int = 10) -> float:
        """Mean fraction of the exact (brute-force) top-k found in this index's top-k.

        1.0 for a flat index (up to exact score ties); for HNSW it measures what the approximation costs.
        """
        q = _as_queries(queries, self.manifest.dim, self.manifest.model_id)  # [Q, D]
        if q.shape[0] == 0:
            raise ValueError("recall_vs_exact needs at least one query.")
        k_eff = min(check_k(k), len(self))
        _, labels = self._topk(q, k_eff)  # [Q, k']
        hits = 0
        for sl, block in self._score_chunks(q):  # block: [q_chunk, N]
            exact = np.argpartition(-block, k_eff - 1, axis=1)[:, :k_eff]  # [q_chunk, k'] unordered top-k
            for found, truth in zip(labels[sl], exact, strict=True):
                hits += len(set(found.tolist()) & set(truth.tolist()))
        return hits / (q.shape[0] * k_eff)

    # ------------------------------------------------------------------ persistence (format: storage.py)
    def save(self, directory: str | os.PathLike[str], dtype: str = "float32") -> None:
        """Atomically write the index to ``directory`` (replacing any index already there); ``dtype``
        "float16" stores the embeddings at half size (read back as float32)."""
        save_index(directory, self.ids, self.embeddings, self.manifest, self.faiss_index, dtype)
        logger.info("Saved %s index of %d candidates to %s.", self.manifest.kind, len(self), directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], expected: IndexManifest | None = None) -> CandidateIndex:
        """Load an index saved by ``save``, verifying file integrity and (optionally) its manifest.

        Raises FileNotFoundError if the directory or a file is missing, IndexMismatchError if ``expected``
        is given and differs in identity, CorruptIndexError if a file is truncated, corrupt or unreadable.
        """
        ids, embeddings, manifest, index = load_index(directory, expected)
        try:
            loaded = cls(ids, embeddings, index, manifest)
        except ValueError as err:
            hint = rebuild_hint(directory)
            raise CorruptIndexError(f"Index at {directory} could not be read ({err}); {hint}.") from err
        logger.info("Loaded %s index of %d candidates from %s.", manifest.kind, len(loaded), directory)
        return loaded
