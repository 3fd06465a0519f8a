"""The embedding map: a 2-D UMAP of the candidate pools and the benchmark queries, computed once and cached.

Points:
- every candidate of every loaded pool, once per candidate id (the same candidate in several pools of one
  dataset has the same embedding: candidates never see an instruction and never reason);
- every benchmark query twice when its per-query embeddings are available: its *direct* embedding (the hidden
  state before `<|emb|>` at the first step, free from the routing pass) and its *final* one (after the CoT
  when it reasoned; the same vector when it went direct).

UMAP is fitted once over all of them (cosine metric, fixed seed) and the coordinates are cached in a parquet
file named by a fingerprint of everything they depend on: the model, each pool, the query embeddings and the
UMAP settings. Calls are serialised (numba aborts on concurrent calls).

The map keeps its points' unit vectors (`EmbeddingMap.vectors`) so that neighbours are found in embedding space,
and says how it sampled a pool too large to draw (`MapSample`).

A *new* query is not pushed through `UMAP.transform`: it is placed from its nearest neighbours in its task's
pool, at the similarity-weighted mean of their map coordinates (`place`). That is cheap, deterministic and
honest about what the map shows: where the query's top hits lie.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trace_core.atomic import atomic_file

log = logging.getLogger(__name__)

MAP_VERSION = 1  # bump when the point layout or the columns change
_UMAP_LOCK = threading.Lock()
COLUMNS = ["point", "kind", "id", "pair", "dataset", "modality", "route", "hit", "label", "image", "x", "y"]
KINDS = ("candidate", "query (direct)", "query (final)")
CATEGORICAL = ("kind", "pair", "dataset", "modality", "route", "hit")  # sent to the browser as codes


@dataclass(frozen=True)
class MapConfig:
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 42
    hit_k: int = 5  # a query point is a "hit" when its gold is in the top hit_k from that embedding
    max_candidates: int = 20_000  # larger pools (real M-BEIR) are sampled, keeping every gold candidate
    max_queries: int = 5_000  # so are larger query sets (each query is two points)


@dataclass
class PoolPoints:
    """One candidate pool: its ids, embeddings [N, D] and per-candidate metadata."""

    pair: str
    ids: Sequence[str]
    embeddings: np.ndarray
    modality: Sequence[str]
    label: Sequence[str]
    image: Sequence[str | None]


@dataclass
class QueryPoints:
    """The benchmark queries of one pair with their direct and final embeddings [Q, D] and metadata."""

    pair: str
    qids: Sequence[str]
    direct: np.ndarray
    final: np.ndarray
    modality: Sequence[str]
    route: Sequence[str]
    label: Sequence[str]
    image: Sequence[str | None]
    hit_direct: Sequence[bool]
    hit_final: Sequence[bool]


@dataclass(frozen=True)
class MapSample:
    """How many points the pools and the benchmark hold, and how many of them the map shows."""

    candidates_total: int  # distinct candidate ids over every pool
    candidates_shown: int
    queries_total: int  # benchmark queries with embeddings (each is two points on the map)
    queries_shown: int

    @property
    def points_total(self) -> int:
        return self.candidates_total + 2 * self.queries_total

    @property
    def points_shown(self) -> int:
        return self.candidates_shown + 2 * self.queries_shown

    def sentence(self) -> str:
        """The sampling rule in words, for the page."""
        if self.points_shown == self.points_total:
            return f"Showing all {self.points_shown:,} points (no sampling)."
        parts = []
        if self.candidates_shown < self.candidates_total:
            parts.append(f"{self.candidates_shown:,} of {self.candidates_total:,} candidates: every gold candidate "
                         "of a benchmark query, then the others in a fixed pseudo-random order (SHA-1 of the id)")
        if self.queries_shown < self.queries_total:
            parts.append(f"{self.queries_shown:,} of {self.queries_total:,} queries, in a fixed pseudo-random order "
                         "(SHA-1 of task/query id)")
        return (f"Showing {self.points_shown:,} of {self.points_total:,} points, sampled by keeping "
                + "; and ".join(parts) + ". The same sample on every start.")


def _dataset(pair: str) -> str:
    return pair.rsplit("_task", 1)[0]


def map_fingerprint(pools: Sequence[PoolPoints], queries: Sequence[QueryPoints], model: Mapping,
                    config: MapConfig, keep: set[str] | None = None) -> str:
    """Hash of everything the coordinates depend on."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": MAP_VERSION, "model": dict(model), "config": asdict(config),
                         "keep": sorted(keep or ())}, sort_keys=True).encode())
    for p in sorted(pools, key=lambda p: p.pair):
        h.update(p.pair.encode())
        h.update("\n".join(p.ids).encode())
        h.update(np.ascontiguousarray(p.embeddings, dtype=np.float32).tobytes())
    for q in sorted(queries, key=lambda q: q.pair):
        h.update(q.pair.encode())
        h.update("\n".join(q.qids).encode())
        h.update(np.ascontiguousarray(q.direct, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(q.final, dtype=np.float32).tobytes())
        h.update(json.dumps([list(q.route), [bool(x) for x in q.hit_direct], [bool(x) for x in q.hit_final]]).encode())
    return h.hexdigest()[:16]


def _sample(ids: Sequence[str], keep: set[str], limit: int) -> set[str]:
    """At most `limit` ids: all of `keep` first, then the others in a fixed pseudo-random order (by hash)."""
    unique = list(dict.fromkeys(ids))
    if len(unique) <= limit:
        return set(unique)
    chosen = [d for d in unique if d in keep][:limit]
    rest = sorted((d for d in unique if d not in keep), key=lambda d: hashlib.sha1(d.encode()).hexdigest())
    return set(chosen + rest[: limit - len(chosen)])


def collect(pools: Sequence[PoolPoints], queries: Sequence[QueryPoints], keep: set[str] | None = None,
            config: MapConfig = MapConfig()) -> tuple[pd.DataFrame, np.ndarray]:
    """The map's points (without coordinates) and their vectors, candidates first, deduplicated by id.

    Beyond `config.max_candidates` distinct candidates, a fixed sample is kept that includes every id in `keep`;
    beyond `config.max_queries` queries, a fixed sample of them.
    """
    rows, vecs, seen = [], [], {}
    allowed = _sample([d for p in pools for d in p.ids], keep or set(), config.max_candidates)
    shown = _sample([f"{q.pair}/{qid}" for q in queries for qid in q.qids], set(), config.max_queries)
    for p in pools:
        for i, did in enumerate(p.ids):
            if did in seen or did not in allowed:
                continue
            seen[did] = len(rows)
            rows.append({"kind": "candidate", "id": did, "pair": p.pair, "dataset": _dataset(p.pair),
                         "modality": p.modality[i], "route": "candidate", "hit": "candidate", "label": p.label[i],
                         "image": p.image[i]})
            vecs.append(p.embeddings[i])
    for q in queries:
        for kind, emb, hits in (("query (direct)", q.direct, q.hit_direct), ("query (final)", q.final, q.hit_final)):
            for i, qid in enumerate(q.qids):
                if f"{q.pair}/{qid}" not in shown:
                    continue
                rows.append({"kind": kind, "id": qid, "pair": q.pair, "dataset": _dataset(q.pair),
                             "modality": q.modality[i], "route": q.route[i], "hit": "hit" if hits[i] else "miss",
                             "label": q.label[i], "image": q.image[i]})
                vecs.append(emb[i])
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("point", "x", "y")])
    table.insert(0, "point", np.arange(len(table)))
    matrix = np.asarray(vecs, dtype=np.float32).reshape(len(rows), -1)
    return table, matrix


def fit_umap(matrix: np.ndarray, config: MapConfig) -> np.ndarray:
    """2-D coordinates [N, 2] of unit vectors (cosine UMAP, fixed seed; one call at a time)."""
    n = len(matrix)
    if n < 4:  # UMAP needs a neighbourhood; with a handful of points a line is as honest
        return np.stack([np.arange(n, dtype=np.float32), np.zeros(n, dtype=np.float32)], axis=1)
    with _UMAP_LOCK:
        import umap  # slow import (numba); only when a map is built

        reducer = umap.UMAP(n_neighbors=min(config.n_neighbors, n - 1), min_dist=config.min_dist, metric="cosine",
                            random_state=config.seed, init="spectral" if n > 32 else "random")
        return reducer.fit_transform(matrix).astype(np.float32)


def sample_of(pools: Sequence[PoolPoints], queries: Sequence[QueryPoints], table: pd.DataFrame) -> MapSample:
    """What `collect` kept of the pools and queries (its `table`)."""
    kinds = table["kind"].value_counts()
    return MapSample(len({d for p in pools for d in p.ids}), int(kinds.get("candidate", 0)),
                     sum(len(q.qids) for q in queries), int(kinds.get("query (final)", 0)))


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero), float32 [N, D]: cosine is then a dot product."""
    m = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0)


@dataclass
class EmbeddingMap:
    points: pd.DataFrame  # COLUMNS; `point` is the row number
    fingerprint: str
    vectors: np.ndarray | None = field(default=None, repr=False)  # [N, D] unit vectors, row n = point n
    sample: MapSample | None = None  # how the pools were sampled; None when not known

    def __post_init__(self) -> None:
        cand = self.points[self.points["kind"] == "candidate"]
        self._candidate = dict(zip(cand["id"], cand["point"], strict=True))
        queries = self.points[self.points["kind"] != "candidate"]
        self._query = {(p, k, i): n for p, k, i, n in zip(queries["pair"], queries["kind"], queries["id"],
                                                          queries["point"], strict=True)}

    @property
    def xy(self) -> np.ndarray:
        return self.points[["x", "y"]].to_numpy(dtype=np.float64)

    def candidate_point(self, did: str) -> int | None:
        return self._candidate.get(did)

    def query_point(self, pair: str, qid: str, kind: str = "query (final)") -> int | None:
        return self._query.get((pair, kind, qid))

    def place(self, dids: Sequence[str], scores: Sequence[float], temperature: float = 0.05) -> tuple[float, float]:
        """Where a new embedding goes: the softmax(score / temperature)-weighted mean of its neighbours' points."""
        pts = [(self._candidate[d], s) for d, s in zip(dids, scores, strict=True) if d in self._candidate]
        if not pts:
            raise ValueError("none of the neighbours is on the map")
        idx = np.array([p for p, _ in pts])
        s = np.array([s for _, s in pts], dtype=np.float64)
        w = np.exp((s - s.max()) / temperature)
        xy = (self.xy[idx] * (w / w.sum())[:, None]).sum(axis=0)
        return float(xy[0]), float(xy[1])

    def to_client(self) -> dict:
        """The columns the browser needs, fetched once by the page (`write_client`; coordinates rounded to 1e-3).
        Columns of a few values go as {"cats": [...], "codes": [...]}: at 100k points, a fifth of the bytes."""
        p = self.points
        out = {"x": np.round(p["x"], 3).tolist(), "y": np.round(p["y"], 3).tolist(), "id": p["id"].astype(str).tolist(),
               "label": [str(s)[:90] for s in p["label"]]}
        for c in CATEGORICAL:
            codes, cats = pd.factorize(p[c].astype(str))
            out[c] = {"cats": [str(v) for v in cats], "codes": codes.tolist()}
        return out

    def write_client(self, folder: str | Path) -> Path:
        """`to_client` as a JSON file in `folder` (written atomically), for a page to fetch once."""
        path = Path(folder) / f"embedding-map-{self.fingerprint}.json"
        text = json.dumps(self.to_client(), separators=(",", ":"))
        atomic_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path


def load_or_build(pools: Sequence[PoolPoints], queries: Sequence[QueryPoints], model: Mapping, cache_dir: str | Path,
                  config: MapConfig = MapConfig(), keep: set[str] | None = None,
                  shipped: Sequence[str | Path] = ()) -> EmbeddingMap:
    """The cached map when its fingerprint matches; otherwise fit UMAP once and cache the result atomically.

    `keep`: candidate ids that stay on the map when a large pool is sampled (the benchmark's gold items).
    `shipped`: read-only folders looked in before the cache (the app's `assets/cache`), same file names.
    """
    fp = map_fingerprint(pools, queries, model, config, keep)
    path = Path(cache_dir) / f"embedding-map-{fp}.parquet"
    table, matrix = collect(pools, queries, keep, config)
    vectors, sample = unit_rows(matrix), sample_of(pools, queries, table)
    for where in [*(Path(f) / path.name for f in shipped), path]:
        if not where.is_file():
            continue
        try:
            cached = pd.read_parquet(where)
            if list(cached.columns) == COLUMNS and len(cached) == len(table) and \
                    (cached["id"].to_numpy() == table["id"].to_numpy()).all() and \
                    np.isfinite(cached[["x", "y"]].to_numpy()).all():
                log.info("loaded the %s embedding map %s (%d points)", "cached" if where == path else "shipped",
                         path.name, len(cached))
                return EmbeddingMap(cached, fp, vectors, sample)
            log.warning("embedding map %s does not match its points; not used", where)
        except Exception as exc:  # noqa: BLE001 - a corrupt file of any kind is rebuilt
            log.warning("embedding map %s is unreadable (%s); not used", where, exc)
    t0 = time.perf_counter()
    log.info("building the embedding map: UMAP over %d points (once; cached afterwards)", len(table))
    xy = fit_umap(matrix, config)
    table["x"], table["y"] = xy[:, 0], xy[:, 1]
    table = table[COLUMNS]
    atomic_file(path, lambda tmp: table.to_parquet(tmp, index=False))
    log.info("embedding map built in %.1f s -> %s", time.perf_counter() - t0, path)
    return EmbeddingMap(table, fp, vectors, sample)
