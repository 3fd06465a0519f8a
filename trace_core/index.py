"""Candidate index: nearest-neighbour search over the encoded M-BEIR candidate pool.

Design
------
A ``CandidateIndex`` holds three things side by side:

* ``ids`` -- the M-BEIR ``did`` of every candidate, in pool order;
* ``embeddings`` -- the L2-normalised candidate vectors ``[N, D]`` float32, kept in memory so that
  *exact* ranks (``rank_of`` / ``ranks_of``) and an exact recall check (``recall_vs_exact``) can always
  be computed with plain numpy, even when the search structure is approximate;
* a faiss index used for top-k search: ``IndexFlatIP`` (exact inner product, i.e. cosine on normalised
  vectors) up to ``IndexConfig.approximate_above`` candidates, ``IndexHNSWFlat`` above it.

Every index carries an ``IndexManifest`` naming what produced it (model, revision, prompt template, pool
contents). Loading with ``expected=`` refuses an index built by a different model/prompt/pool instead of
silently returning meaningless neighbours -- stale indexes are the most common silent bug in retrieval
evaluation.

On disk an index is a directory with ``index.faiss``, ``embeddings.npy``, ``ids.json`` and
``manifest.json``; ``manifest.json`` also records the size and sha256 of the other three files so that
truncated or corrupted files are detected at load time rather than producing wrong scores. ``save`` is
atomic: everything is written and fsynced into a temporary sibling directory which is then renamed into
place, so a crash never leaves a half-written index under the target name.

Large pools are encoded in shards (one slice per GPU/host) with ``write_shard`` and combined with
``merge_shards``, which checks that every shard is present, that all shards agree on the manifest and that
together they cover the pool exactly once before building the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
MANIFEST_FILE = "manifest.json"
# Files whose size and sha256 are recorded in manifest.json (the manifest itself is written last and acts as
# the commit marker of the directory).
_DATA_FILES = (INDEX_FILE, EMBEDDINGS_FILE, IDS_FILE)
_KINDS = ("flat", "hnsw")
# Fields that identify what an index was built from; two manifests differing in any of them are not
# interchangeable. ``kind`` is deliberately absent: a flat and an HNSW index over the same pool answer the
# same question.
_IDENTITY_FIELDS = ("model_id", "model_revision", "prompt_hash", "dim", "pool_size", "pool_hash")
# Upper bound on the number of float32 scores materialised at once by the exact numpy paths
# (2**25 floats = 128 MiB), so ranking thousands of queries against a million candidates stays bounded.
_SCORE_BUDGET = 1 << 25
_HASH_CHUNK = 1 << 20
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.json$")
_NORM_TOLERANCE = 1e-3


class IndexMismatchError(Exception):
    """The index on disk was built for a different model, prompt or candidate pool than expected."""


class CorruptIndexError(Exception):
    """An index or shard file is unreadable, truncated or inconsistent with its manifest."""


@dataclass(frozen=True)
class IndexManifest:
    """What produced an index; stored in ``manifest.json`` and compared on load."""

    model_id: str  # model name or path that produced the embeddings
    model_revision: str  # checkpoint revision / weights hash ("" if unknown)
    prompt_hash: str  # hash of the candidate prompt template
    dim: int  # embedding dimension D
    pool_size: int  # number of candidates N
    pool_hash: str  # content hash of the candidate pool records (see pool_fingerprint)
    kind: str = "flat"  # "flat" (exact inner product) or "hnsw" (approximate)
    format_version: int = FORMAT_VERSION  # on-disk layout version of the index directory

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"IndexManifest.dim must be positive, got {self.dim}.")
        if self.pool_size <= 0:
            raise ValueError(f"IndexManifest.pool_size must be positive, got {self.pool_size}.")
        if self.kind not in _KINDS:
            raise ValueError(f"IndexManifest.kind must be one of {_KINDS}, got {self.kind!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndexManifest:
        """Inverse of ``to_dict``; raises ValueError naming missing fields (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name not in ("kind", "format_version")}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"Index manifest is missing field(s) {', '.join(missing)}.")
        return cls(**{k: v for k, v in data.items() if k in known})

    def compatible(self, other: IndexManifest) -> list[str]:
        """Human-readable differences between this (expected) manifest and ``other`` (found).

        An empty list means an index described by ``other`` can be used where ``self`` is expected.
        """
        diffs = [
            f"{name}: expected {getattr(self, name)!r}, found {getattr(other, name)!r}"
            for name in _IDENTITY_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]
        if self.format_version != other.format_version:
            diffs.append(f"format_version: expected {self.format_version}, found {other.format_version}")
        return diffs


@dataclass(frozen=True)
class IndexConfig:
    """How to build the faiss search structure."""

    approximate_above: int = 500_000  # pools larger than this get an HNSW index, smaller ones exact flat IP
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


def pool_fingerprint(records: Iterable[Mapping[str, Any]]) -> str:
    """sha256 over the canonical JSON (sorted keys, one line per record) of the pool, in pool order.

    Callers pass it as ``pool_hash`` so an index is tied to the exact candidate records it was built from.
    Raises TypeError if a record holds a value JSON cannot represent.
    """
    digest = hashlib.sha256()
    for record in records:
        line = json.dumps(dict(record), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _ids_fingerprint(ids: Sequence[str]) -> str:
    # Fallback pool_hash when the caller has no records at hand: the ordered id list.
    return hashlib.sha256(json.dumps(list(ids), ensure_ascii=False).encode("utf-8")).hexdigest()


def _validate_ids(ids: Sequence[str], n: int) -> list[str]:
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"Got {len(ids)} ids for {n} embedding rows; they must have the same length.")
    bad = next((x for x in ids if not isinstance(x, str)), None)
    if bad is not None:
        raise ValueError(f"Candidate ids must be strings, got {type(bad).__name__} {bad!r}.")
    seen: set[str] = set()
    for did in ids:
        if did in seen:
            raise ValueError(f"Candidate ids must be unique, but {did!r} occurs more than once.")
        seen.add(did)
    return ids


def _validate_embeddings(
    embeddings: np.ndarray, what: str = "Candidate embeddings", allow_empty: bool = False
) -> np.ndarray:
    """Return a private C-contiguous float32 copy ``[N, D]`` after shape/finiteness checks.

    ``allow_empty`` admits N == 0 (a shard of a pool smaller than the shard count).
    """
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [N, D], got shape {arr.shape}.")
    if (arr.shape[0] == 0 and not allow_empty) or arr.shape[1] == 0:
        raise ValueError(f"{what} must be non-empty, got shape {arr.shape}.")
    # Copy so later mutation of the caller's array cannot desynchronise the faiss index from the vectors
    # used for exact ranks.
    arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(arr).all():
        bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(f"{what} contain NaN or inf in {bad_rows.size} row(s), first at row {bad_rows[0]}.")
    return arr


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    # Makes renames/creations inside `path` durable; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write: Callable[[BinaryIO], None]) -> dict[str, Any]:
    """Write, flush and fsync ``path``; return its recorded size and sha256 (hashed from disk)."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": _sha256_file(path)}


def _write_faiss(path: Path, index: faiss.Index) -> dict[str, Any]:
    # faiss writes by path through its own C++ stream, so fsync afterwards through a fresh descriptor.
    faiss.write_index(index, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": _sha256_file(path)}


def _check_file(path: Path, record: Mapping[str, Any], rebuild_hint: str) -> None:
    """Raise FileNotFoundError / CorruptIndexError unless ``path`` matches its recorded size and sha256."""
    if not path.is_file():
        raise FileNotFoundError(f"File {path} is missing; {rebuild_hint}.")
    size = path.stat().st_size
    if size != record.get("size"):
        raise CorruptIndexError(
            f"File {path} is truncated or corrupt (expected {record.get('size')} bytes, found {size}); "
            f"{rebuild_hint}."
        )
    sha = _sha256_file(path)
    if sha != record.get("sha256"):
        raise CorruptIndexError(
            f"File {path} is corrupt (its sha256 {sha[:12]}... does not match the recorded "
            f"{str(record.get('sha256'))[:12]}...); {rebuild_hint}."
        )


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
        self, ids: Sequence[str], embeddings: np.ndarray, index: faiss.Index, manifest: IndexManifest
    ) -> None:
        """Assemble from parts (use ``build``/``load``); checks the parts agree with each other."""
        n, d = embeddings.shape
        if len(ids) != n or manifest.pool_size != n or index.ntotal != n:
            raise ValueError(
                f"Index parts disagree on the pool size: {len(ids)} ids, {n} embedding rows, "
                f"{index.ntotal} faiss vectors, manifest pool_size {manifest.pool_size}."
            )
        if manifest.dim != d or index.d != d:
            raise ValueError(
                f"Index parts disagree on the dimension: embeddings {d}, faiss {index.d}, "
                f"manifest {manifest.dim}."
            )
        self.ids: list[str] = list(ids)
        self.manifest: IndexManifest = manifest
        self.embeddings: np.ndarray = embeddings  # [N, D] float32, read-only; source of exact ranks
        self.embeddings.flags.writeable = False
        self.faiss_index: faiss.Index = index
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
        emb = _validate_embeddings(embeddings)
        n, d = emb.shape
        ids = _validate_ids(ids, n)
        norms = np.linalg.norm(emb, axis=1)  # [N]
        worst = float(np.max(np.abs(norms - 1.0)))
        if worst > _NORM_TOLERANCE:
            # Inner product equals cosine only for unit vectors; not fatal, but scores will not be cosines.
            logger.warning("Candidate embeddings are not L2-normalised (max |norm - 1| = %.3g).", worst)

        started = time.perf_counter()
        if n <= config.approximate_above:
            kind = "flat"
            index: faiss.Index = faiss.IndexFlatIP(d)
        else:
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
            pool_hash=_ids_fingerprint(ids) if pool_hash is None else pool_hash,
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
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        q = _as_queries(queries, self.manifest.dim, self.manifest.model_id)  # [Q, D]
        k_eff = min(k, len(self))
        if self.manifest.kind == "flat":
            # Exact search is a matrix product: numpy's BLAS did it 2-4x faster than faiss-cpu's IndexFlatIP
            # on these machines, for 1 to 64 queries and pools of 10k to 1M (bench/run.py, section search).
            scores, labels = self._exact_topk(q, k_eff)
        else:
            scores, labels = self.faiss_index.search(q, k_eff)  # [Q, k'], [Q, k'] int64 (-1 = not found)
        scores = np.asarray(scores, dtype=np.float32)
        missing = labels < 0
        if missing.any():
            logger.warning("Approximate search returned fewer than %d neighbours for some queries.", k_eff)
            scores[missing] = -np.inf
        ids = [[self.ids[j] if j >= 0 else "" for j in row] for row in labels.tolist()]
        return scores, ids

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

    def recall_vs_exact(self, queries: np.ndarray, k: int = 10) -> float:
        """Mean fraction of the exact (brute-force) top-k found in this index's top-k.

        1.0 for a flat index (up to exact score ties); for HNSW it measures what the approximation costs.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        q = _as_queries(queries, self.manifest.dim, self.manifest.model_id)  # [Q, D]
        if q.shape[0] == 0:
            raise ValueError("recall_vs_exact needs at least one query.")
        k_eff = min(k, len(self))
        _, labels = self.faiss_index.search(q, k_eff)  # [Q, k']
        hits = 0
        for sl, block in self._score_chunks(q):  # block: [q_chunk, N]
            exact = np.argpartition(-block, k_eff - 1, axis=1)[:, :k_eff]  # [q_chunk, k'] unordered top-k
            for found, truth in zip(labels[sl], exact, strict=True):
                hits += len(set(found.tolist()) & set(truth.tolist()))
        return hits / (q.shape[0] * k_eff)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Atomically write the index to ``directory`` (replacing any index already there)."""
        target = Path(directory)
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"Cannot save the index to {target}: it exists and is not a directory.")
        # A hidden sibling in the same parent: same filesystem, so the final rename is atomic.
        tmp = parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
        tmp.mkdir()
        try:
            files = {
                INDEX_FILE: _write_faiss(tmp / INDEX_FILE, self.faiss_index),
                EMBEDDINGS_FILE: _write_file(
                    tmp / EMBEDDINGS_FILE, lambda f: np.save(f, self.embeddings, allow_pickle=False)
                ),
                IDS_FILE: _write_file(
                    tmp / IDS_FILE,
                    lambda f: f.write(json.dumps(self.ids, ensure_ascii=False).encode("utf-8")),
                ),
            }
            doc = {"manifest": self.manifest.to_dict(), "files": files}
            # Written last: a directory with a manifest.json has all its data files.
            _write_file(tmp / MANIFEST_FILE, lambda f: f.write(json.dumps(doc, indent=2).encode("utf-8")))
            _fsync_dir(tmp)
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("Saved %s index of %d candidates to %s.", self.manifest.kind, len(self), target)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], expected: IndexManifest | None = None) -> CandidateIndex:
        """Load an index saved by ``save``, verifying file integrity and (optionally) its manifest.

        Raises FileNotFoundError if the directory or a file is missing, IndexMismatchError if ``expected``
        is given and differs in identity, CorruptIndexError if a file is truncated, corrupt or unreadable.
        """
        directory = Path(directory)
        rebuild = f"delete {directory} and rebuild the index by re-encoding the candidate pool"
        if not directory.is_dir():
            raise FileNotFoundError(
                f"No index directory at {directory}; build it with CandidateIndex.build(...).save(...) first."
            )
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"Index directory {directory} has no {MANIFEST_FILE}; {rebuild}.")
        try:
            doc = json.loads(manifest_path.read_text(encoding="utf-8"))
            manifest = IndexManifest.from_dict(doc["manifest"])
            file_records = doc["files"]
            if not all(name in file_records for name in _DATA_FILES):
                raise ValueError("file records incomplete")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptIndexError(
                f"Index manifest {manifest_path} is unreadable ({err}); {rebuild}."
            ) from err

        # Identity first: cheap, and the more useful message when both problems exist.
        if expected is not None:
            diffs = expected.compatible(manifest)
            if diffs:
                raise IndexMismatchError(
                    f"The index at {directory} was built for a different setup ({'; '.join(diffs)}); "
                    f"{rebuild} with the current model, prompt and pool."
                )
        if manifest.format_version != FORMAT_VERSION:
            raise IndexMismatchError(
                f"The index at {directory} uses format version {manifest.format_version} but this code reads "
                f"version {FORMAT_VERSION}; {rebuild} with this version of the code."
            )

        for name in _DATA_FILES:
            _check_file(directory / name, file_records[name], rebuild)
        try:
            ids = json.loads((directory / IDS_FILE).read_text(encoding="utf-8"))
            embeddings = np.load(directory / EMBEDDINGS_FILE, allow_pickle=False)
            index = faiss.read_index(str(directory / INDEX_FILE))
            if not isinstance(ids, list) or embeddings.dtype != np.float32 or embeddings.ndim != 2:
                raise ValueError("ids or embeddings have the wrong type or shape")
            loaded = cls(ids, embeddings, index, manifest)
        except (OSError, ValueError, RuntimeError) as err:
            raise CorruptIndexError(f"Index at {directory} could not be read ({err}); {rebuild}.") from err
        logger.info("Loaded %s index of %d candidates from %s.", manifest.kind, len(loaded), directory)
        return loaded


def _swap_into_place(new: Path, target: Path) -> None:
    """Replace ``target`` by the complete directory ``new`` using renames only.

    ``target`` is renamed aside first and restored if the second rename fails, so at every moment
    ``target`` is either the old complete index, the new complete index, or (between the two renames, on
    a crash) absent -- never partially written.
    """
    old: Path | None = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{secrets.token_hex(6)}"
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- sharded pool encoding
def shard_bounds(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous ``[start, end)`` slice of ``n`` items for ``shard``; shard sizes differ by at most 1."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must satisfy 0 <= shard < num_shards ({num_shards}), got {shard}.")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    base, extra = divmod(n, num_shards)
    # The first `extra` shards get one more item.
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def _shard_stem(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> dict[str, Any]:
    # Temporary sibling + os.replace: readers see either the old file or the complete new one.
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
    try:
        record = _write_file(tmp, write)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return record


def write_shard(
    directory: str | os.PathLike[str],
    shard: int,
    num_shards: int,
    ids: Sequence[str],
    embeddings: np.ndarray,
    manifest: IndexManifest,
) -> Path:
    """Write one encoded slice of the pool as ``shard-SSSSS-of-NNNNN.npz`` plus a ``.json`` manifest.

    ``manifest`` describes the *full* pool; ``ids``/``embeddings`` [n_shard, D] must be exactly the slice
    ``shard_bounds(manifest.pool_size, shard, num_shards)``. The ``.json`` is written after the ``.npz`` and
    marks the shard complete. Returns the ``.npz`` path.
    """
    start, end = shard_bounds(manifest.pool_size, shard, num_shards)
    if end == start and np.asarray(embeddings).size == 0:
        # An empty slice (pool smaller than the shard count) still needs its file so merge sees every shard;
        # encoders may hand back shape [0] instead of [0, D] for no inputs.
        embeddings = np.zeros((0, manifest.dim), dtype=np.float32)
    emb = _validate_embeddings(embeddings, what=f"Shard {shard} embeddings", allow_empty=True)
    ids = _validate_ids(ids, emb.shape[0])
    if len(ids) != end - start:
        raise ValueError(
            f"Shard {shard} of {num_shards} must hold candidates [{start}, {end}) of the "
            f"{manifest.pool_size}-candidate pool ({end - start} items), got {len(ids)}."
        )
    if emb.shape[1] != manifest.dim:
        raise ValueError(
            f"Shard {shard} embeddings have dimension {emb.shape[1]}, manifest says {manifest.dim}."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = _shard_stem(shard, num_shards)
    npz_path = directory / f"{stem}.npz"
    id_array = np.asarray(ids, dtype=str)  # fixed-width unicode, loadable without pickle
    record = _atomic_write(npz_path, lambda f: np.savez(f, ids=id_array, embeddings=emb))
    meta = {
        "manifest": manifest.to_dict(),
        "shard": shard,
        "num_shards": num_shards,
        "start": start,
        "end": end,
        "file": npz_path.name,
        **record,
    }
    _atomic_write(directory / f"{stem}.json", lambda f: f.write(json.dumps(meta, indent=2).encode("utf-8")))
    logger.info("Wrote shard %d/%d (%d candidates) to %s.", shard, num_shards, len(ids), npz_path)
    return npz_path


def merge_shards(
    directory: str | os.PathLike[str],
    config: IndexConfig = IndexConfig(),  # noqa: B008 -- frozen dataclass, safe as a default
) -> CandidateIndex:
    """Check and concatenate all shards written by ``write_shard`` in ``directory`` and build the index."""
    directory = Path(directory)
    rerun = "re-run the pool encoding for the affected shard(s)"
    if not directory.is_dir():
        raise FileNotFoundError(f"No shard directory at {directory}; encode the pool with write_shard first.")
    metas: dict[int, dict[str, Any]] = {}
    counts: set[int] = set()
    for path in sorted(directory.iterdir()):
        match = _SHARD_RE.match(path.name)
        if not match:
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            meta["manifest"] = IndexManifest.from_dict(meta["manifest"])
            shard, num_shards = int(meta["shard"]), int(meta["num_shards"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptIndexError(f"Shard manifest {path} is unreadable ({err}); {rerun}.") from err
        if (shard, num_shards) != (int(match[1]), int(match[2])):
            raise CorruptIndexError(
                f"Shard manifest {path} describes shard {shard} of {num_shards}; {rerun}."
            )
        counts.add(num_shards)
        metas[shard] = meta
    if not metas:
        raise FileNotFoundError(
            f"No shard files (shard-*-of-*.json) in {directory}; encode the pool with write_shard first."
        )
    if len(counts) > 1:
        raise IndexMismatchError(
            f"Shards in {directory} come from runs with different shard counts {sorted(counts)}; remove the "
            f"stale shard files and {rerun}."
        )
    num_shards = counts.pop()
    missing = [s for s in range(num_shards) if s not in metas]
    if missing:
        names = ", ".join(f"{_shard_stem(s, num_shards)}.npz" for s in missing)
        raise FileNotFoundError(
            f"Missing {len(missing)} of {num_shards} shards in {directory}: shard(s) "
            f"{', '.join(map(str, missing))} ({names}); {rerun}."
        )

    reference: IndexManifest = metas[0]["manifest"]
    for s in range(1, num_shards):
        diffs = reference.compatible(metas[s]["manifest"])
        if diffs:
            raise IndexMismatchError(
                f"Shard {s} in {directory} was encoded with a different setup than shard 0 "
                f"({'; '.join(diffs)}); {rerun} with one model, prompt and pool."
            )

    ids: list[str] = []
    blocks: list[np.ndarray] = []  # per shard [n_shard, D]
    expected_start = 0
    for s in range(num_shards):
        meta = metas[s]
        start, end = int(meta["start"]), int(meta["end"])
        if start != expected_start or end < start:
            raise CorruptIndexError(
                f"Shard {s} in {directory} covers [{start}, {end}) but the pool continues at {expected_start}; "
                f"the shards do not tile the pool contiguously, {rerun}."
            )
        expected_start = end
        npz_path = directory / str(meta["file"])
        _check_file(npz_path, meta, rerun)
        try:
            with np.load(npz_path, allow_pickle=False) as data:
                shard_ids = data["ids"].tolist()
                emb = data["embeddings"]
        except (OSError, ValueError, KeyError) as err:
            raise CorruptIndexError(f"Shard file {npz_path} could not be read ({err}); {rerun}.") from err
        if len(shard_ids) != end - start or emb.shape != (end - start, reference.dim):
            raise CorruptIndexError(
                f"Shard file {npz_path} holds {len(shard_ids)} ids and embeddings of shape {emb.shape}, "
                f"expected {end - start} rows of dimension {reference.dim}; {rerun}."
            )
        ids.extend(shard_ids)
        blocks.append(emb)
    if expected_start != reference.pool_size:
        raise CorruptIndexError(
            f"Shards in {directory} cover {expected_start} candidates but the pool has {reference.pool_size}; "
            f"{rerun}."
        )
    logger.info("Merging %d shards (%d candidates) from %s.", num_shards, len(ids), directory)
    return CandidateIndex.build(
        ids,
        np.concatenate(blocks, axis=0),
        model_id=reference.model_id,
        model_revision=reference.model_revision,
        prompt_hash=reference.prompt_hash,
        pool_hash=reference.pool_hash,
        config=config,
    )
